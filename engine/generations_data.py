"""The learner's data source for logged generations: whole completions drawn from a stored
generations buffer (``zarrl.buffers.generations``, written by ``zarrl import generations``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer
from zarrl.engine.registry import BufferPathError

__all__ = ["GenerationsDataSource", "buffer_facts", "open_generations_buffer"]


def open_generations_buffer(path: str | Path, storage_options: Mapping[str, Any] | None = None):
    """The ``GenerationsBuffer`` at ``path`` (a folder or a store URL, ``storage_options`` for
    its store); :class:`BufferPathError` names the path when it is missing, is not a
    generations buffer, or holds no completion."""
    from zarrl.buffers.generations import GenerationsBuffer
    from zarrl.buffers.object_store import is_url

    path = path if is_url(path) else Path(path)
    if isinstance(path, Path) and not path.exists():
        raise BufferPathError(
            f"generations buffer {str(path)!r} does not exist (create it with "
            "`zarrl import generations FILE --buffer PATH`)"
        )
    try:
        buffer = GenerationsBuffer.open(path, storage_options=dict(storage_options or {}) or None)
    except Exception as err:
        raise BufferPathError(
            f"{str(path)!r} cannot be opened as a generations buffer: {err}"
        ) from err
    if buffer.num_completions == 0 or buffer.storage is None:
        buffer.close()
        raise BufferPathError(f"generations buffer {str(path)!r} holds no completion")
    return buffer


def buffer_facts(buffer) -> dict[str, int]:
    """What a policy is built for: vocabulary, end token, length limit, prompts, longest prompt."""
    lengths = buffer.prompt_tokens(torch.arange(buffer.num_prompts))[1].sum(-1)
    return {
        "vocab_size": int(buffer.vocab_size),
        "eos_id": int(buffer.eos_id),
        "max_new_tokens": int(buffer.max_new_tokens),
        "num_prompts": int(buffer.num_prompts),
        "max_prompt_len": int(lengths.max()) if lengths.numel() else 0,
    }


class GenerationsDataSource:
    """A :class:`zarrl.engine.sources.DataSource` of ``batch_size`` whole completions a batch
    (uniform over completions, or ``group_size`` completions of each of ``batch_size //
    group_size`` prompts for per-prompt baselines), drawn with the source's own generator, saved
    in checkpoints, so that a resumed run draws the batches the uninterrupted one would have.

    ``buffer`` is a TorchRL ``ReplayBuffer`` over the generations buffer's token storage (its
    ``write_count``: the token rows held); nothing is ever written.
    """

    collects = False

    def __init__(
        self, generations, *, batch_size: int, seed: int, group_size: int | None = None
    ) -> None:
        if group_size is not None and (group_size < 1 or batch_size % group_size):
            raise BufferPathError(
                f"env.options.group_size: got {group_size}, expected a divisor of "
                f"train.batch_size ({batch_size})"
            )
        self.generations = generations
        self.buffer = ReplayBuffer(storage=generations.storage, batch_size=None)
        self.batch_size, self.group_size = batch_size, group_size
        self.generator = torch.Generator().manual_seed(seed)

    def collect(self) -> int:
        return 0

    def next_batch(self) -> TensorDictBase:
        """One batch ``[batch_size]`` in the sequence-batch layout (``docs/generations.md``)."""
        if self.group_size is None:
            return self.generations.sample(self.batch_size, generator=self.generator)
        return self.generations.sample_groups(
            self.batch_size // self.group_size, self.group_size, generator=self.generator
        )

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def close(self) -> None:
        """Nothing runs; the trainer closes the storage."""
