"""Shared plumbing of the zarrl losses: reading ``[*B, T]`` step tensors, scoring actions, frozen
networks."""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, is_tensor_collection
from tensordict.nn import TensorDictModuleBase, TensorDictParams
from torch import Tensor
from zarrl.algorithms.scoring import BatchedLogProb

__all__ = [
    "StepBatch",
    "check_finite",
    "coefficient",
    "reduce_windows",
    "rollout_length",
    "frozen_params",
    "read_steps",
    "score",
    "score_actions",
    "score_batch",
    "segment_sum",
    "fixed_reference_log_prob",
]


def _fmt(key: NestedKey) -> str:
    return repr(key)


def step_tensor(td: TensorDictBase, key: NestedKey, *, required: bool = True) -> Tensor | None:
    """``td[key]`` as a ``td.batch_size`` tensor (a trailing singleton dim is squeezed)."""
    value = td.get(key, None)
    if value is None:
        if required:
            raise KeyError(
                f"the loss needs the entry {_fmt(key)} in the input TensorDict "
                f"(found keys {sorted(map(str, td.keys(True, True)))})"
            )
        return None
    shape = td.batch_size
    if value.shape != shape:
        if value.shape[:-1] == shape and value.shape[-1] == 1:
            value = value.squeeze(-1)
        else:
            raise ValueError(
                f"entry {_fmt(key)} has shape {tuple(value.shape)}, expected {tuple(shape)} "
                f"or {(*shape, 1)} for a batch of shape {tuple(shape)}"
            )
    return value


@dataclass
class StepBatch:
    """The per-step tensors of a ``[*B, T]`` batch of (sub-)trajectories, T the last batch dim."""

    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    valid: Tensor | None
    is_init: Tensor | None


def read_steps(td: TensorDictBase, keys) -> StepBatch:
    """Rewards and episode marks from ``td`` using the loss's ``tensor_keys``.

    Reads ``("next", reward)``, ``("next", terminated)``, and ``("next", truncated)`` /
    ``("next", done)`` when present (a step that is done but not terminated counts as truncated),
    the padding ``mask`` and ``is_init`` when present.
    """
    if td.batch_dims < 1:
        raise ValueError("the loss needs a batch with a time dimension: [*B, T] or flat [N]")
    if td.batch_size[-1] == 0:
        raise ValueError(
            f"the batch has no time steps (T = 0, batch shape {tuple(td.batch_size)}): "
            "sample at least one step per row"
        )
    nxt = td.get("next", None)
    if nxt is None:
        raise KeyError("the loss needs the 'next' sub-TensorDict (reward, terminated, ...)")
    reward = step_tensor(nxt, keys.reward)
    terminated = step_tensor(nxt, keys.terminated).to(torch.bool)
    truncated = step_tensor(nxt, keys.truncated, required=False)
    truncated = torch.zeros_like(terminated) if truncated is None else truncated.to(torch.bool)
    done = step_tensor(nxt, keys.done, required=False)
    if done is not None:  # a done that is not a termination ends the segment too
        truncated = truncated | (done.to(torch.bool) & ~terminated)
    valid = step_tensor(td, keys.mask, required=False) if keys.mask is not None else None
    is_init = step_tensor(td, keys.is_init, required=False) if keys.is_init is not None else None
    if td.batch_dims == 1:
        _check_flat_boundaries(td, terminated, truncated, valid, is_init, marked=done is not None)
    return StepBatch(
        reward=reward,
        terminated=terminated,
        truncated=truncated.to(torch.bool),
        valid=None if valid is None else valid.to(torch.bool),
        is_init=None if is_init is None else is_init.to(torch.bool),
    )


def _check_flat_boundaries(
    td: TensorDictBase,
    terminated: Tensor,
    truncated: Tensor,
    valid: Tensor | None,
    is_init: Tensor | None,
    *,
    marked: bool,
) -> None:
    """A flat ``[N]`` batch is one row of concatenated slices: refuse it when nothing can mark
    where one slice stops (no ``is_init``, ``truncated`` or ``done`` entry), and, when it carries
    the replay buffer's ``"index"``, when consecutive steps jump in the storage (another slice)
    with neither an end mark nor ``is_init`` between them."""
    if is_init is None and not marked and td.get(("next", "truncated"), None) is None:
        raise ValueError(
            "a flat [N] batch needs ('next', 'truncated') or 'is_init' to mark where its slices "
            "end (TorchRL's SliceSampler writes both); without them consecutive slices would "
            "be merged into one segment. Reshape it to [num_slices, slice_len] or add the marks"
        )
    index = td.get("index", None)
    if index is None or index.ndim != 1 or index.shape[0] != td.batch_size[0] or len(index) < 2:
        return
    index = index.to(torch.long)
    jump = (index[1:] != index[:-1] + 1) & (index[1:] != 0)  # 0: a circular storage wraps
    marked_end = terminated[:-1] | truncated[:-1]
    if is_init is not None:
        marked_end = marked_end | is_init[1:]
    unmarked = jump & ~marked_end
    if valid is not None:
        unmarked = unmarked & valid[:-1] & valid[1:]
    if unmarked.any():
        where = int(unmarked.nonzero()[0, 0])
        raise ValueError(
            f"flat batch: steps {where} and {where + 1} come from storage indices "
            f"{int(index[where])} and {int(index[where + 1])} (different slices) but step "
            f"{where} is neither terminated nor truncated and step {where + 1} is not is_init; "
            "mark slice ends (SliceSampler(truncated_key=...)) or reshape to [B, T]"
        )


def _check_batch_shape(log_prob: Tensor, td: TensorDictBase, what: str) -> None:
    if log_prob.shape != td.batch_size:
        raise ValueError(
            f"{what} {tuple(log_prob.shape)}, expected the batch shape {tuple(td.batch_size)}"
        )


def _same_buffer(a: Tensor | None, b: Tensor) -> bool:
    return (
        a is not None
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )


def _holds(module: torch.nn.Module, params: TensorDictBase) -> bool:
    """Whether swapping ``params`` into ``module`` would change nothing: every parameter leaf is
    the very ``nn.Parameter`` the module holds under that name and every buffer leaf views the
    same memory (e.g. a loss's own, non-expanded actor parameters)."""
    own = dict(module.named_parameters(remove_duplicate=False))
    buffers = dict(module.named_buffers(remove_duplicate=False))
    count = 0
    for key, value in params.items(include_nested=True, leaves_only=True):
        name = ".".join(key) if isinstance(key, tuple) else key
        if name in own:
            if own[name] is not value:
                return False
        elif not _same_buffer(buffers.get(name), value):
            return False
        count += 1
    return count == len(own) + len(buffers)


def _with_params(module: TensorDictModuleBase, params: TensorDictBase | None, call):
    """``call()`` with ``params`` (functional parameters, e.g. a loss's copy) swapped into
    ``module`` for its duration; ``params=None`` uses the module's own, as do ``params`` that
    already are the module's own tensors (the swap is skipped)."""
    if params is None or _holds(module, params):
        return call()
    with params.to_module(module, preserve_module_state=False):
        return call()


def score_actions(
    module: TensorDictModuleBase,
    params: TensorDictBase | None,
    td: TensorDictBase,
    action_key: NestedKey,
) -> tuple[Tensor, torch.distributions.Distribution]:
    """log π(a|s) ``[*B]`` of the stored actions under ``module`` with ``params``, in one call.

    The log-probability is summed over the action dims (all dims past the batch dims).
    """
    if not hasattr(module, "get_dist"):
        raise TypeError(f"{type(module).__name__} has no get_dist(td); use a ProbabilisticActor")
    work = td.copy()
    dist = _with_params(module, params, lambda: module.get_dist(work))
    action = td.get(action_key, None)
    if action is None:
        raise KeyError(f"the loss needs the action entry {_fmt(action_key)}")
    log_prob = dist.log_prob(action)
    if is_tensor_collection(log_prob):
        log_prob = sum(log_prob.values(True, True))
    batch_dims = td.batch_dims
    if log_prob.ndim > batch_dims:
        log_prob = log_prob.reshape(*log_prob.shape[:batch_dims], -1).sum(-1)
    _check_batch_shape(log_prob, td, "log_prob has shape")
    return log_prob, dist


def score(
    module: TensorDictModuleBase,
    params: TensorDictBase | None,
    td: TensorDictBase,
    action_key: NestedKey,
) -> tuple[Tensor, torch.distributions.Distribution | None]:
    """``(log π(a|s) [*B], dist or None)``: through the policy's ``batched_log_prob`` hook when it
    has one (see :func:`score_batch`; no distribution object then), else :func:`score_actions`."""
    hook = module.batched_log_prob if isinstance(module, BatchedLogProb) else None
    if hook is None:  # no hook, or one switched off by setting it to None
        return score_actions(module, params, td, action_key)
    log_prob = _with_params(module, params, lambda: hook(td, action_key))
    _check_batch_shape(log_prob, td, f"{type(module).__name__}.batched_log_prob returned shape")
    return log_prob, None


def score_batch(
    module: TensorDictModuleBase,
    params: TensorDictBase | None,
    td: TensorDictBase,
    action_key: NestedKey,
) -> Tensor:
    """log π(a|s) ``[*B]`` (nats, summed over action dims) of ``td[action_key]`` under ``module``.

    A policy implementing :class:`~zarrl.algorithms.BatchedLogProb` is scored through its
    ``batched_log_prob``; any other TorchRL actor through ``get_dist``.
    """
    return score(module, params, td, action_key)[0]


def fixed_reference_log_prob(
    module: TensorDictModuleBase,
    params: TensorDictBase | None,
    td: TensorDictBase,
    action_key: NestedKey,
    stored_key: NestedKey | None,
) -> Tensor:
    """log p(a|s) ``[*B]`` (nats) of a fixed reference policy (a prior), without gradient.

    ``td[stored_key]`` when the batch carries it — computed once when the data was generated
    (``DiffusionActor.sample_trajectories(reference=...)``, logged generations) — else scored now
    through :func:`score_batch`. A stored entry must come from this very reference policy.
    """
    if stored_key is not None:
        stored = step_tensor(td, stored_key, required=False)
        if stored is not None:
            return stored.detach()
    with torch.no_grad():
        return score_batch(module, params, td, action_key)


def entropy_estimate(dist, log_prob: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of ``dist`` over valid steps (``−mean log π`` when it has no closed form)."""
    try:
        ent = dist.entropy()
        if ent.ndim > mask.ndim:
            ent = ent.reshape(*mask.shape, -1).sum(-1)
        ent = ent.detach()
    except (NotImplementedError, AttributeError, RuntimeError):
        ent = -log_prob.detach()
    return masked_mean(ent, mask)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() / mask.sum().clamp(min=1)


def frozen_params(module: torch.nn.Module) -> TensorDictParams:
    """The module's parameters as non-trainable buffers (shared storage, no gradient)."""
    params = TensorDict.from_module(module, as_module=True)
    frozen = params.apply(lambda p: p.data, filter_empty=False)
    return TensorDictParams(frozen, no_convert=True)


def segment_sum(x: Tensor, start: Tensor, end_index: Tensor) -> Tensor:
    """Sum of ``x`` ``[*B, T]`` over each segment, written at its start step (0 elsewhere).

    ``start`` and ``end_index`` come from :func:`~zarrl.algorithms.segment_marks`; ``x`` must be 0 on
    padding.
    """
    T = x.shape[-1]
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    bad = ~torch.isfinite(x)
    # a non-finite step spoils its own segment only, not every later one of the prefix sum
    clean = torch.where(bad, zero, x)
    last = end_index.clamp(max=T - 1)

    def sums(v: Tensor) -> Tensor:
        prefix = torch.cat([torch.zeros_like(v[..., :1]), v.cumsum(-1)], dim=-1)
        return prefix.gather(-1, last + 1) - prefix[..., :T]

    total = sums(clean)
    if bad.any():
        spoiled = sums(bad.to(x.dtype)) > 0
        total = torch.where(spoiled, torch.full_like(total, math.nan), total)
    return torch.where(start, total, zero)


def coefficient(
    name: str,
    value,
    *,
    minimum: float | None = 0.0,
    strictly_above: bool = False,
    maximum: float | None = None,
) -> float:
    """``value`` (a Python or NumPy number, or a one-element array / tensor) as a finite float,
    checked against ``minimum`` (``> minimum`` when ``strictly_above``) and ``maximum``;
    a ``ValueError`` names ``name`` otherwise."""
    if isinstance(value, bool) or (
        hasattr(value, "dtype") and str(getattr(value, "dtype", "")).endswith("bool")
    ):
        raise ValueError(f"{name} must be a number, got the bool {value!r}")
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy array or torch tensor
        if tuple(value.shape) not in ((), (1,)):
            raise ValueError(f"{name} must be a scalar, got an array of shape {tuple(value.shape)}")
        value = value.item() if hasattr(value, "item") else value
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strictly_above else value < minimum):
        raise ValueError(f"{name} must be {'>' if strictly_above else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def rollout_length(rollout) -> int | Literal["full"]:
    """The window length ``rollout``: an integer >= 1 (Python or NumPy, not a bool) or
    ``"full"``; a ``ValueError`` otherwise."""
    if isinstance(rollout, str) and rollout == "full":
        return "full"
    if not isinstance(rollout, (bool, str)) and not (
        hasattr(rollout, "dtype") and str(rollout.dtype).endswith("bool")
    ):
        try:
            length = operator.index(rollout)
        except TypeError:
            length = None
        if length is not None and length >= 1:
            return length
    raise ValueError(f"rollout must be an int >= 1 or 'full', got {rollout!r}")


def check_finite(td: TensorDictBase, keys, *, what: str = "entry") -> None:
    """Raise a ``ValueError`` naming the key and the batch index (row, step) of the first
    non-finite value (NaN or ±inf) among the floating ``td`` entries ``keys``; absent keys and
    non-floating entries are skipped. Trailing (feature) dims count for their batch element."""
    for key in keys:
        value = td.get(key, None)
        if value is not None:
            check_finite_tensor(key, value, td.batch_dims, what=what)


def check_finite_tensor(name, value: Tensor, batch_dims: int, *, what: str = "entry") -> None:
    """:func:`check_finite` for one tensor whose first ``batch_dims`` dims are the batch."""
    if not torch.is_floating_point(value):
        return
    bad = ~torch.isfinite(value)
    if value.ndim > batch_dims:
        bad = bad.reshape(*value.shape[:batch_dims], -1).any(-1)
    if not bad.any():
        return
    where = tuple(int(i) for i in bad.nonzero()[0])
    at = f"row {where[0]}, step {where[-1]}" if len(where) > 1 else f"step {where[-1]}"
    raise ValueError(
        f"{what} {_fmt(name)} is not finite at batch index {where} ({at}); "
        "drop or repair that step before training"
    )


def read_weights(td: TensorDictBase, key: NestedKey | None, dtype: torch.dtype) -> Tensor | None:
    """The replay buffer's importance weights ``td[key]`` as a ``[*B, T]`` tensor of ``dtype``
    (a per-row ``[*B]`` weight is repeated along T), or ``None`` when the batch has none."""
    if key is None:
        return None
    value = td.get(key, None)
    if value is None:
        return None
    shape = td.batch_size
    if value.shape == shape[:-1] and td.batch_dims > 1:
        value = value.unsqueeze(-1).expand(shape)
    weights = step_tensor(td, key) if value.shape != shape else value
    return weights.to(dtype)


def reduce_windows(
    per_window: Tensor,
    windows: Tensor,
    weights: Tensor | None,
    reduction: Literal["mean", "sum", "none"],
) -> Tensor:
    """Reduce a ``[*B, T]`` per-window loss over the windows (bool ``[*B, T]``) as TorchRL's
    ``_reduce`` does with importance ``weights`` (``[*B, T]`` or ``None``): ``"mean"``
    Σ w·ℓ / Σ w (0 when there is no window), ``"sum"`` Σ w·ℓ, ``"none"`` w·ℓ ``[*B, T]``
    (0 where no window starts)."""
    zero = torch.zeros((), dtype=per_window.dtype, device=per_window.device)
    w = windows.to(per_window.dtype) if weights is None else torch.where(windows, weights, zero)
    weighted = torch.where(windows, per_window * w, zero)
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    den = w.sum()
    return torch.where(den > 0, total / torch.where(den > 0, den, 1.0), zero)


def write_priority(td: TensorDictBase, key: NestedKey | None, priority: Tensor) -> None:
    """Write the per-step priority ``[*B, T]`` (detached, float32: the dtype of TorchRL's sum
    trees) into the input ``td`` under ``key`` for ``ReplayBuffer.update_tensordict_priority(td)``;
    ``key=None`` writes nothing."""
    if key is None:
        return
    device = td.device if td.device is not None else priority.device
    td.set(key, priority.detach().to(device=device, dtype=torch.float32))


def floating_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The promoted floating dtype of the networks' outputs ``tensors`` (the default dtype when
    none is floating)."""
    dtype = None
    for t in tensors:
        if t is not None and torch.is_floating_point(t):
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return torch.get_default_dtype() if dtype is None else dtype
