"""The ``gmm_posterior`` task: fine-tune the seed paper's 25-mode diffusion prior toward the 9-mode
posterior (``zarrl.envs.gmm_posterior``), with its fast sampler as the data source.

Policy: a trainable copy of the prior's drift network (:class:`~zarrl.envs.gmm_posterior.
DiffusionActor`); prior: the fixed prior itself; value (Trust-PCL): :class:`TimeStateValue`. The
task is a :class:`~zarrl.engine.sources.TrajectorySampler`: ``train.mode: sampler`` draws whole
trajectories with the compiled kernels (the prior scores every step while they are drawn), with
the exploration schedule of ``env.options``. One buffer row per trajectory
(:func:`pack_trajectories`). :meth:`GMMPosteriorTask.metrics` reports the task's figures on
``eval_samples`` on-policy samples (mode weights and TV, wrong-mode mass, ELBO, IS log Ẑ, W₂) and
the learned log Z.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import nn
from zarrl.algorithms import RTBLoss, TrustPCLLoss
from zarrl.engine.config import ConfigError, EnvConfig, ModelConfig
from zarrl.engine.tasks.base import register_task, task_options
from zarrl.envs.gmm_posterior import (
    NUM_STEPS,
    DiffusionActor,
    DiffusionSamplerEnv,
    classifier_guidance_sample,
    load_prior,
    sample_target,
    task_metrics,
)
from zarrl.envs.gmm_posterior.policy import SinusoidalTimeFeatures, trajectories_to_tensordict

__all__ = [
    "DEFAULTS",
    "EVAL_SEED",
    "GMMPosteriorTask",
    "TimeStateValue",
    "pack_trajectories",
    "unpack_trajectories",
]

#: ``env.options`` of the task and their defaults (the reference schedule of the seed paper)
DEFAULTS: dict[str, Any] = {
    "prior": None,  # prior checkpoint; null: the shipped one
    "explore": True,  # extra exploration std while sampling (off-policy methods)
    "explore_std": 0.5,
    "explore_hold_updates": 500,
    "explore_anneal_updates": 4_500,
    "eval_samples": 2_000,  # on-policy samples per evaluation
    "eval_w2": True,  # exact W₂ to as many samples of g₉ (O(N³) assignment)
    "value_hidden": 64,  # TimeStateValue (Trust-PCL's learned V(x, t))
    "value_num_freqs": 32,
    "value_depth": 2,
}
#: the evaluation samples of a run seeded ``s`` are drawn with seed ``EVAL_SEED + s``
EVAL_SEED = 1_000_003


class TimeStateValue(nn.Module):
    """A learned soft value ``V(x, t)``: ``(x: [*B, 2], t: [*B, 1]) -> [*B, 1]`` (nats).

    Sinusoidal time features -> MLP embedding, summed with a linear state embedding, then
    ``depth`` × [GELU, Linear] and a zero-initialized scalar head (V ≡ 0 at the start). The time
    embedding is computed once per distinct time and shared across the batch.
    """

    def __init__(self, hidden: int = 64, num_freqs: int = 32, depth: int = 2, dim: int = 2):
        super().__init__()
        self.time_features = SinusoidalTimeFeatures(num_freqs)
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * num_freqs, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.state_embed = nn.Linear(dim, hidden)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.GELU(), nn.Linear(hidden, 1)]
        self.trunk = nn.Sequential(*layers)
        nn.init.zeros_(self.trunk[-1].weight)
        nn.init.zeros_(self.trunk[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.squeeze(-1) if t.shape == x.shape[:-1] + (1,) else t
        unique, inverse = torch.unique(t.reshape(-1), return_inverse=True)
        table = self.time_mlp(self.time_features(unique))
        # index_select's backward (index_add) is ~2x faster on CPU than indexing's (index_put)
        t_emb = torch.index_select(table, 0, inverse).reshape(*t.shape, -1)
        return self.trunk(self.state_embed(x) + t_emb)


def pack_trajectories(td: TensorDictBase) -> TensorDict:
    """``[N, T]`` trajectories in the env's key layout -> ``[N]`` buffer rows: ``path``
    ``[N, T + 1, 2]``, ``action_log_prob`` ``[N, T]``, ``log_reward`` ``[N]`` (nats), and
    ``ref_log_prob`` ``[N, T]`` (the prior's per-step log-probability) when ``td`` has it."""
    xs = torch.cat([td.get("observation")[:, :1], td.get("action")], dim=1)
    rows = TensorDict(
        {
            "path": xs,
            "action_log_prob": td.get("action_log_prob"),
            "log_reward": td.get(("next", "reward"))[:, -1, 0],
        },
        batch_size=td.batch_size[:1],
    )
    if "ref_log_prob" in td:
        rows.set("ref_log_prob", td.get("ref_log_prob"))
    return rows


def unpack_trajectories(rows: TensorDictBase) -> TensorDict:
    """Inverse of :func:`pack_trajectories`: ``[N]`` rows -> ``[N, T]`` env-layout trajectories."""
    for key in ("path", "action_log_prob", "log_reward"):
        if key not in rows:
            raise KeyError(f"buffer rows lack {key!r}; found {sorted(rows.keys())}")
    td = trajectories_to_tensordict(rows.get("path"), rows.get("action_log_prob"), None)
    td.get(("next", "reward"))[:, -1, 0] = rows.get("log_reward")
    if "ref_log_prob" in rows:
        td.set("ref_log_prob", rows.get("ref_log_prob"))
    return td


@torch.no_grad()
def learned_log_z(loss: nn.Module) -> float:
    """The learned log Z (nats): RTB's parameter, V(s₀)/λ for Trust-PCL, NaN otherwise."""
    if isinstance(loss, RTBLoss):
        return float(loss.log_z)
    if isinstance(loss, TrustPCLLoss):
        device = next(loss.parameters()).device
        s0 = TensorDict(
            {
                "observation": torch.zeros(1, 2, device=device),
                "time": torch.zeros(1, 1, device=device),
            },
            batch_size=[1],
            device=device,
        )
        with loss.value_network_params.to_module(loss.value_network, preserve_module_state=False):
            out = loss.value_network(s0)
        value = float(out.get(loss.tensor_keys.value).reshape(-1)[0])
        lam = float(loss.kl_coef)
        return value / lam if lam > 0 else value
    return math.nan


@register_task("gmm_posterior")
class GMMPosteriorTask:
    """``env.options``: see :data:`DEFAULTS`. Exploration: extra per-step std ``e`` =
    ``explore_std`` for the first ``explore_hold_updates`` draws, then
    ``explore_std·max(0, 1 − draw/explore_anneal_updates)`` (0 when ``explore`` is false).
    ``env.name`` is a display name; the ``model`` section is unused (the networks are the prior's).
    """

    provides: frozenset[str] = frozenset({"prior", "sampler"})

    def __init__(self, env: EnvConfig, model: ModelConfig, *, seed: int = 0) -> None:
        self.options = task_options("gmm_posterior", env.options, DEFAULTS)
        for key in ("explore_anneal_updates", "eval_samples", "value_hidden", "value_num_freqs"):
            if self.options[key] <= 0:
                raise ConfigError(f"env.options.{key}: got {self.options[key]!r}, expected > 0")
        for key in ("explore_std", "explore_hold_updates", "value_depth"):
            if self.options[key] < 0:
                raise ConfigError(f"env.options.{key}: got {self.options[key]!r}, expected >= 0")
        self.num_envs = env.num_envs
        self.seed = seed
        with torch.random.fork_rng(devices=[]):  # loading draws a throw-away initialization:
            self.prior_net = load_prior(self.options["prior"])  # leave the run's stream alone
        self._prior = DiffusionActor(self.prior_net)
        self.description = (
            f"{env.name} (25-mode diffusion prior -> 9-mode posterior, T={NUM_STEPS})"
        )
        self.max_episode_steps = NUM_STEPS
        #: ``[N, 2]`` final states of the last evaluation's on-policy samples (CPU)
        self.last_samples: torch.Tensor | None = None

    # ------------------------------------------------------------------ Task
    def make_env(self, *, seed: int, num_envs: int | None = None) -> DiffusionSamplerEnv:
        """The diffusion sampler as a TorchRL env (``num_envs`` trajectories side by side)."""
        return DiffusionSamplerEnv(self.num_envs if num_envs is None else num_envs)

    def build_actor(self) -> TensorDictModuleBase:
        """A trainable copy of the prior's drift network."""
        return DiffusionActor(copy.deepcopy(self.prior_net).requires_grad_(True).train())

    def build_value(self) -> TensorDictModuleBase:
        opts = self.options
        net = TimeStateValue(opts["value_hidden"], opts["value_num_freqs"], opts["value_depth"])
        return TensorDictModule(net, in_keys=["observation", "time"], out_keys=["state_value"])

    def build_prior(self) -> TensorDictModuleBase:
        """The fixed prior (one module: the sampler scores with it wherever the learner put it)."""
        return self._prior

    def metrics(self, actor: nn.Module, loss: nn.Module, *, reference: str) -> dict[str, float]:
        """The task metrics of ``eval_samples`` on-policy samples, and the learned log Z."""
        metrics, self.last_samples = self.evaluate(actor, seed=EVAL_SEED + self.seed)
        return {"log_z": learned_log_z(loss), **metrics}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    # ------------------------------------------------------------------ sampler function
    def exploration_std(self, draw: int) -> float:
        """Extra per-step std ``e`` of the ``draw``-th draw (see the class docstring)."""
        opts = self.options
        if not opts["explore"]:
            return 0.0
        if draw < opts["explore_hold_updates"]:
            return float(opts["explore_std"])
        return opts["explore_std"] * max(0.0, 1.0 - draw / opts["explore_anneal_updates"])

    def sample_rows(
        self, actor: nn.Module, num: int, *, draw: int, generator: torch.Generator
    ) -> TensorDictBase:
        """``num`` trajectories of ``actor`` with the draw's exploration -> ``[num]`` rows (with the
        prior's per-step log-probabilities)."""
        td = actor.sample_trajectories(
            num,
            extra_std=self.exploration_std(draw),
            reference=self._prior.drift_net,
            generator=generator,
        )
        return pack_trajectories(td)

    def batch_from_rows(self, rows: TensorDictBase) -> TensorDictBase:
        return unpack_trajectories(rows)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, actor: nn.Module | None, *, seed: int, guidance_scale: float | None = None
    ) -> tuple[dict[str, float], torch.Tensor]:
        """Task metrics of ``eval_samples`` samples (no exploration) -> ``(metrics, x_T [N, 2])``.

        ``actor`` ``None``: the prior sampled with classifier guidance of ``guidance_scale``
        (0: the prior itself). ELBO and IS log Ẑ use log q of the sampler itself and log p of the
        prior, both scored in batched calls."""
        num = self.options["eval_samples"]
        device = next(self.prior_net.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        if actor is None:
            td = classifier_guidance_sample(
                self.prior_net, num, scale=guidance_scale or 0.0, generator=gen, device=device
            )
            log_p = self._prior.trajectory_log_prob(td)
        else:  # the prior scores the samples while they are drawn
            td = actor.sample_trajectories(
                num, extra_std=0.0, reference=self.prior_net, generator=gen, device=device
            )
            log_p = td.get("ref_log_prob").sum(-1)
        log_q = td.get("action_log_prob").sum(-1)
        log_r = td.get(("next", "reward"))[:, -1, 0]
        x = td.get(("next", "observation"))[:, -1].cpu()
        reference = None
        if self.options["eval_w2"]:
            reference = sample_target(num, generator=torch.Generator().manual_seed(seed + 1))
        return task_metrics(x, reference, log_p.cpu(), log_q.cpu(), log_r.cpu()), x
