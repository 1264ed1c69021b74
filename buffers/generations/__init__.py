"""zarrl.buffers.generations: logged generations of sequence models in a Zarr buffer.

Import (``import_generations``) validates records of ``.jsonl``, ``.parquet`` files and saved
``datasets`` folders and appends one row per completion token to a ``ZarrStorage``; the reader
``GenerationsBuffer`` returns batches of whole completions as a ``TensorDict`` ``[B]``:

- ``("tokens", "prompt")`` int64 ``[B, Lp]`` left-padded with 0, ``("masks", "prompt")`` bool
- ``("tokens", "response")`` int64 ``[B, L]`` right-padded with 0, ``("masks", "response")``
- ``("log_probs", "behaviour")`` float32 ``[B, L]`` (0 on padding), ``("log_probs", "ref")``
  when the buffer stores reference log-probs
- ``log_reward`` float32, ``prompt`` / ``group_id`` / ``policy_version`` / ``completion`` int64,
  ``terminated`` bool, all ``[B]``

``L`` is the longest completion of the batch. See ``docs/generations.md``.
"""

from .buffer import GenerationsBuffer
from .importer import FileReport, ImportReport, import_generations
from .layout import Facts
from .readers import TRL, parse_field_map
from .records import FIELDS, GenerationsImportError, Problem

__all__ = [
    "FIELDS",
    "TRL",
    "Facts",
    "FileReport",
    "GenerationsBuffer",
    "GenerationsImportError",
    "ImportReport",
    "Problem",
    "import_generations",
    "parse_field_map",
]
