"""The learner's data source for logged generations: whole completions drawn from a stored
generations buffer (``zarrl.buffers.generations``, written by ``zarrl import generations``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from zarrl.engine.registry import BufferPathError

__all__ = ["GenerationsDataSource", "open_generations_buffer"]


def open_generations_buffer(path: str | Path):
    """The ``GenerationsBuffer`` at ``path``; :class:`BufferPathError` names the path when it is
    missing or is not a generations buffer."""
    from zarrl.buffers.generations import GenerationsBuffer

    path = Path(path)
    if not path.exists():
        raise BufferPathError(
            f"generations buffer {str(path)!r} does not exist (create it with "
            "`zarrl import generations FILE --buffer PATH`)"
        )
    try:
        return GenerationsBuffer.open(path)
    except Exception as err:
        raise BufferPathError(
            f"{str(path)!r} cannot be opened as a generations buffer: {err}"
        ) from err


class GenerationsDataSource:
    """Batches of ``batch_size`` whole completions (uniform over completions, or ``group_size``
    completions of each of ``batch_size // group_size`` prompts), drawn with the source's own
    generator so that a resumed run draws the batches the uninterrupted one would have.

    ``len()`` is the number of completions; ``write_count`` the same (the buffer is read-only).
    """

    def __init__(
        self, path: str | Path, *, batch_size: int, seed: int, group_size: int | None = None
    ) -> None:
        if group_size is not None and (group_size < 1 or batch_size % group_size):
            raise ValueError(
                f"group_size: got {group_size}, expected a divisor of batch_size ({batch_size})"
            )
        self.path = Path(path)
        self.buffer = open_generations_buffer(path)
        if self.buffer.num_completions == 0:
            raise BufferPathError(f"generations buffer {str(self.path)!r} holds no completion")
        self.batch_size, self.group_size = batch_size, group_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> TensorDictBase:
        """One batch ``[batch_size]`` in the sequence-batch layout."""
        if self.group_size is None:
            return self.buffer.sample(self.batch_size, generator=self.generator)
        return self.buffer.sample_groups(
            self.batch_size // self.group_size, self.group_size, generator=self.generator
        )

    def __len__(self) -> int:
        return int(self.buffer.num_completions)

    @property
    def write_count(self) -> int:
        return len(self)

    def facts(self) -> dict[str, int]:
        """What a policy must be built for: vocabulary, end token, length limit, prompts."""
        buf = self.buffer
        lengths = buf.prompt_tokens(torch.arange(buf.num_prompts))[1].sum(-1)
        return {
            "vocab_size": int(buf.vocab_size),
            "eos_id": int(buf.eos_id),
            "max_new_tokens": int(buf.max_new_tokens),
            "num_prompts": int(buf.num_prompts),
            "max_prompt_len": int(lengths.max()) if lengths.numel() else 0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def flush(self) -> None:
        """Nothing to flush: the learner only reads."""

    def close(self) -> None:
        self.buffer.close()
