"""The torch internals the GMM task relies on, in one place (torch 2.14).

``envs`` may not import ``buffers`` (the one-way doors of ``docs/architecture.md``), so the
task's one use of a torch internal is fenced here rather than beside the buffers' fences.
"""

from __future__ import annotations

import torch


def tensor_version(tensor: torch.Tensor) -> int:
    """The in-place version counter of ``tensor`` (``Tensor._version``, bumped by every
    in-place change, e.g. an optimizer step, and read by autograd's saved-tensor checks)."""
    return tensor._version
