"""Adam parameter groups named by the module that owns each parameter of a loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from zarrl.algorithms import LogZValue

__all__ = ["GROUP_OWNERS", "parameter_groups"]

#: the loss attribute that owns a parameter -> its group (each group has its own learning rate)
GROUP_OWNERS = {
    "actor_network_params": "policy",
    "value_network_params": "value",
    "log_z": "log_z",
}

#: a head of a sequence policy (``zarrl.envs.generations``) -> its group
HEAD_GROUPS = {"value_head": "value", "log_z_head": "log_z"}


def parameter_groups(loss: nn.Module, lrs: Mapping[str, float]) -> list[dict[str, Any]]:
    """Adam groups ``policy`` / ``value`` / ``log_z`` of ``loss``'s trainable parameters.

    A parameter belongs to the group of the loss attribute that owns it (TorchRL's functional
    ``actor_network_params`` and ``value_network_params``, RTB's ``log_z``); a value network that
    is a :class:`~zarrl.algorithms.LogZValue` (Trust-PCL built from RTB: V(s₀) = α·log Z) is the
    ``log_z`` group, and so is the ``log_z_head`` of a sequence policy (its ``value_head``: the
    ``value`` group). Frozen parameters (priors, targets) are left out. ``lrs`` maps each group
    name to its learning rate; a parameter owned by anything else is refused by name.
    """
    value_is_log_z = isinstance(getattr(loss, "value_network", None), LogZValue)
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in ("policy", "value", "log_z")}
    for name, param in loss.named_parameters():
        if not param.requires_grad:
            continue
        owner = name.split(".", 1)[0]
        group = GROUP_OWNERS.get(owner)
        if group == "policy":  # the heads of a sequence policy learn at their own rates
            group = HEAD_GROUPS.get(name.split(".")[1], group)
        if group is None:
            raise ValueError(
                f"parameter {name!r} of {type(loss).__name__} is owned by {owner!r}, which has no "
                f"optimizer group (owners with one: {', '.join(GROUP_OWNERS)})"
            )
        if group == "value" and value_is_log_z:
            group = "log_z"
        groups[group].append(param)
    return [{"params": p, "lr": lrs[k], "name": k} for k, p in groups.items() if p]
