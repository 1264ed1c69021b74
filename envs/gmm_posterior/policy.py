"""The Gaussian diffusion policy of the GMM task: a drift network, its TorchRL probabilistic actor,
batched scoring of ``[B, T]`` transitions, and a fast no-grad sampler of full trajectories.

A step of the sampler is ``x_{i+1} ~ N(x_i + dt·f(x_i, t_i), (σ²·dt + e²)·I)`` with ``t_i = i/T``,
``dt = 1/T`` and an optional extra exploration std ``e`` (0 for the policy itself). The time embedding
is computed once per distinct time value and shared across the batch, so scoring all ``B·T``
transitions of a batch is a handful of large matrix products.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import ProbabilisticActor
from torchrl.modules.distributions import IndependentNormal

from .mixtures import log_reward as gmm_log_reward
from .native_gelu import gelu_, gelu_and_grad
from .native_mlp import mlp_sample, native_mlp_supports
from .scoring import MAX_KEPT_ACTIVATION_BYTES, SampledActivations, fused_step_log_prob
from .side_thread import caller_single_threaded, side_executor, side_thread_helps

#: Diffusion coefficient σ² of the task.
SIGMA2 = 5.0
#: Number of steps T of the task.
NUM_STEPS = 100
#: Rows per block when a frozen drift network scores a large batch (8192 × 64 float32 = 2 MB).
DRIFT_BLOCK_ROWS = 8192

_LOG_2PI = math.log(2 * math.pi)


def time_per_state(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Times ``[*B]`` or ``[*B, 1]`` of states ``x: [*B, D]`` -> ``[*B]`` (else a ValueError)."""
    if t.shape == x.shape[:-1] + (1,):
        t = t.squeeze(-1)
    if t.shape != x.shape[:-1]:
        raise ValueError(
            f"time must have shape {tuple(x.shape[:-1])} or {tuple(x.shape[:-1]) + (1,)} "
            f"to match state {tuple(x.shape)}, got {tuple(t.shape)}"
        )
    return t


class SinusoidalTimeFeatures(nn.Module):
    """``t: [K] -> [K, 2·num_freqs]`` features ``[sin(f·t + φ), cos(f·t + φ)]`` with frequencies
    ``f`` linearly spaced in ``[min_freq, max_freq]`` and a learnable phase ``φ`` (one per frequency)."""

    def __init__(self, num_freqs: int = 64, min_freq: float = 0.1, max_freq: float = 100.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.linspace(min_freq, max_freq, num_freqs))
        self.phase = nn.Parameter(torch.randn(num_freqs))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.unsqueeze(-1) * self.freqs + self.phase
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class DriftNetwork(nn.Module):
    """The reference drift network ``f(x, t)`` (about 21k parameters).

    time features (128) -> Linear -> GELU -> Linear (64); state -> Linear (64); sum -> GELU ->
    2 × [Linear(64, 64), GELU] -> Linear(64, 2), the last layer zero-initialized (zero drift).

    ``forward(x: [*B, 2], t: [*B, 1] or [*B]) -> [*B, 2]``; ``t`` is the time in ``[0, 1]``.
    """

    def __init__(self, hidden: int = 64, num_freqs: int = 64, dim: int = 2) -> None:
        super().__init__()
        self.dim = dim
        #: the fused sampler's last activations, handed to the loss's scoring of the same steps
        self.sampled = SampledActivations()
        self.time_features = SinusoidalTimeFeatures(num_freqs)
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * num_freqs, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.state_embed = nn.Linear(dim, hidden)
        self.trunk = nn.Sequential(
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )
        nn.init.zeros_(self.trunk[-1].weight)
        nn.init.zeros_(self.trunk[-1].bias)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """``t: [K] -> [K, hidden]`` (compute it once per distinct time, share it across a batch)."""
        return self.time_mlp(self.time_features(t))

    def drift_from_embedding(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``x: [*B, 2]`` and a time embedding broadcastable to ``[*B, hidden]`` -> ``[*B, 2]``."""
        return self.trunk(self.state_embed(x) + t_emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"state must have last dimension {self.dim}, got shape {tuple(x.shape)}"
            )
        t = time_per_state(t, x)
        t_emb = self.shared_time_embedding(t)
        if torch.is_grad_enabled() and (x.requires_grad or self.builds_graph()):
            return self.drift_from_embedding(x, t_emb)
        return self.drift_no_graph(x, t_emb)

    def builds_graph(self) -> bool:
        """Whether a drift computed now records an autograd graph (some parameter needs a
        gradient); the sampler and the losses pick the graph-free kernels otherwise."""
        return any(p.requires_grad for p in self.parameters())

    def drift_no_graph(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`drift_from_embedding` when no graph is needed (a frozen prior, sampling):
        biases folded, GELUs in place, ``addmm`` on the flattened batch (about 25 % faster), and
        large batches in blocks along the first dim so the ``[rows, H]`` activations stay in cache."""
        rows = x.numel() // self.dim
        if x.ndim < 2 or x.shape[0] < 2 or rows <= DRIFT_BLOCK_ROWS:
            return self._drift_no_graph_block(x, t_emb)
        step = max(1, DRIFT_BLOCK_ROWS // (rows // x.shape[0]))
        per_row = t_emb.ndim == x.ndim and t_emb.shape[0] == x.shape[0]
        out = torch.empty_like(x)
        for s in range(0, x.shape[0], step):
            cond = t_emb[s : s + step] if per_row else t_emb
            out[s : s + step] = self._drift_no_graph_block(x[s : s + step], cond)
        return out

    def _drift_no_graph_block(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        hidden = self.state_embed.out_features
        # mm on the flattened rows: a strided [B, T, 2] input would otherwise go through a slow bmm
        h = torch.mm(x.reshape(-1, self.dim), self.state_embed.weight.t())
        h = h.view(*x.shape[:-1], hidden).add_(t_emb + self.state_embed.bias)
        h = gelu_(h.view(-1, hidden))
        for layer in (self.trunk[1], self.trunk[3]):
            h = gelu_(torch.mm(h, layer.weight.t()), bias=layer.bias.detach())
        out = self.trunk[5]
        return torch.addmm(out.bias, h, out.weight.t()).reshape(x.shape)

    def shared_time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Embedding of ``t: [*B]`` broadcastable to ``[*B, hidden]``, computed on distinct times only."""
        flat = t.reshape(-1)
        if flat.numel() == 0:
            return self.time_embedding(flat).reshape(*t.shape, -1)
        if bool((flat == flat[0]).all()):  # one time step for the whole batch (env stepping)
            return self.time_embedding(flat[:1])
        if t.ndim >= 2:
            rows = t.reshape(-1, t.shape[-1])
            if bool((rows == rows[:1]).all()):  # [B, T] trajectories on a shared time grid
                return self.time_embedding(rows[0])
        unique, inverse = torch.unique(flat, return_inverse=True)
        # index_select's backward (index_add) is ~2x faster on CPU than indexing's (index_put)
        return torch.index_select(self.time_embedding(unique), 0, inverse).reshape(*t.shape, -1)


class DiffusionStep(nn.Module):
    """``(observation: [*B, 2], time: [*B, 1]) -> (loc, scale)`` of one Gaussian diffusion step.

    ``loc = x + dt·f(x, t)``, ``scale = sqrt(σ²·dt + extra_std²)`` broadcast to ``loc``'s shape.
    """

    def __init__(
        self,
        drift_net: DriftNetwork,
        sigma2: float = SIGMA2,
        num_steps: int = NUM_STEPS,
        extra_std: float = 0.0,
    ) -> None:
        super().__init__()
        if sigma2 <= 0:
            raise ValueError(f"sigma2 must be positive, got {sigma2}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.drift_net = drift_net
        self.sigma2 = float(sigma2)
        self.num_steps = int(num_steps)
        self.dt = 1.0 / self.num_steps
        self.extra_std = extra_std

    @property
    def extra_std(self) -> float:
        return self._extra_std

    @extra_std.setter
    def extra_std(self, value: float) -> None:
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"extra_std must be a finite non-negative float, got {value}")
        self._extra_std = float(value)

    @property
    def policy_std(self) -> float:
        """Per-step std of the policy itself, sqrt(σ²·dt)."""
        return math.sqrt(self.sigma2 * self.dt)

    @property
    def behaviour_std(self) -> float:
        """Per-step std actually sampled with, sqrt(σ²·dt + extra_std²)."""
        return math.sqrt(self.sigma2 * self.dt + self._extra_std**2)

    def loc(self, observation: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        return observation + self.dt * self.drift_net(observation, time)

    def forward(
        self, observation: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.loc(observation, time)
        scale = loc.new_full((1,), self.behaviour_std).expand_as(loc)
        return loc, scale


def gaussian_step_log_prob(action: torch.Tensor, loc: torch.Tensor, std: float) -> torch.Tensor:
    """log N(action; loc, std²·I) summed over the last dim (nats): ``[*B, D] -> [*B]``."""
    d = action.shape[-1]
    z = (action - loc) / std
    return -0.5 * z.pow(2).sum(-1) - d * (math.log(std) + 0.5 * _LOG_2PI)


class DiffusionActor(ProbabilisticActor):
    """TorchRL probabilistic actor of the diffusion policy.

    Reads ``observation`` ``[*B, 2]`` and ``time`` ``[*B, 1]``, writes ``loc``, ``scale``, ``action``
    ``[*B, 2]`` and ``action_log_prob`` ``[*B]`` (summed over the 2 dims, under the behaviour std, i.e.
    including ``extra_std``). ``get_dist(td)`` works for any batch shape, e.g. ``[B]`` and ``[B, T]``.

    Args:
        drift_net: the drift network (shared, not copied).
        sigma2: diffusion coefficient σ².
        num_steps: T; the step size is ``dt = 1/T``.
        extra_std: extra exploration std ``e``; samples use std ``sqrt(σ²·dt + e²)``. Settable.
    """

    def __init__(
        self,
        drift_net: DriftNetwork,
        *,
        sigma2: float = SIGMA2,
        num_steps: int = NUM_STEPS,
        extra_std: float = 0.0,
        observation_key: str = "observation",
        time_key: str = "time",
        action_key: str = "action",
    ) -> None:
        step = DiffusionStep(drift_net, sigma2=sigma2, num_steps=num_steps, extra_std=extra_std)
        module = TensorDictModule(
            step, in_keys=[observation_key, time_key], out_keys=["loc", "scale"]
        )
        super().__init__(
            module,
            in_keys=["loc", "scale"],
            out_keys=[action_key],
            distribution_class=IndependentNormal,
            distribution_kwargs={"tanh_loc": False, "validate_args": False},
            return_log_prob=True,
            log_prob_key=f"{action_key}_log_prob",
        )
        self.step = step
        self.observation_key = observation_key
        self.time_key = time_key
        self.action_key = action_key

    @property
    def drift_net(self) -> DriftNetwork:
        return self.step.drift_net

    @property
    def extra_std(self) -> float:
        return self.step.extra_std

    @extra_std.setter
    def extra_std(self, value: float) -> None:
        self.step.extra_std = value

    def transition_log_prob(self, td: TensorDictBase) -> torch.Tensor:
        """log π(action | observation, time) of every transition under the policy's own std
        (``extra_std`` ignored), in one batched call: ``td`` of batch ``[*B]`` -> ``[*B]`` nats."""
        for key in (self.observation_key, self.time_key, self.action_key):
            if key not in td:
                raise KeyError(f"transition_log_prob needs key {key!r}; td has {sorted(td.keys())}")
        loc = self.step.loc(td.get(self.observation_key), td.get(self.time_key))
        return gaussian_step_log_prob(td.get(self.action_key), loc, self.step.policy_std)

    def batched_log_prob(self, td: TensorDictBase, action_key=None) -> torch.Tensor:
        """``get_dist(td).log_prob(td[action_key])`` summed over the action dims, for ``td`` of any
        batch shape ``[*B]`` (e.g. ``[B, T]``) -> ``[*B]`` nats, under the behaviour std (as
        ``get_dist``) — computed without building a distribution.

        The scoring hook of zarrl's losses (see :class:`~zarrl.algorithms.RTBLoss`): when
        gradients are needed the drift MLP and the Gaussian log-density run as one fused autograd
        function (hand-written backward), with the time embedding computed once per distinct time.
        """
        action_key = self.action_key if action_key is None else action_key
        for key in (self.observation_key, self.time_key, action_key):
            if key not in td:
                raise KeyError(f"batched_log_prob needs key {key!r}; td has {sorted(td.keys())}")
        obs, time, action = td.get(self.observation_key), td.get(self.time_key), td.get(action_key)
        net, std = self.drift_net, self.step.behaviour_std
        fused = type(net).drift_from_embedding is DriftNetwork.drift_from_embedding and (
            torch.is_grad_enabled() and net.builds_graph()
        )
        if not fused or obs.shape != action.shape or obs.shape[-1] != net.dim:
            loc = self.step.loc(obs, time)
            return gaussian_step_log_prob(action, loc, std)
        time = time_per_state(time, obs)
        cached = net.sampled.reuse(net, obs, time, self.step.num_steps)
        if cached is not None:  # the sampler's own trajectories: reuse its forward pass
            cond = net.time_embedding(time[0])  # [T, H], rows time-major below
            x, a = obs.transpose(0, 1), action.transpose(0, 1)
            if not (obs.requires_grad or action.requires_grad):  # no copies: the sampler's states
                xs = net.sampled.states()  # [T + 1, N, D], equal to obs (checked above)
                x = xs[:-1]
                if torch.equal(a, xs[1:]):
                    a = xs[1:]
            log_prob = fused_step_log_prob(
                net,
                x.reshape(-1, net.dim),
                a.reshape(-1, net.dim),
                cond,
                self.step.dt,
                std,
                cached,
            )
            return log_prob.view(time.shape[1], time.shape[0]).t()
        cond = net.shared_time_embedding(time)
        cond = cond.reshape(-1, cond.shape[-1])  # [1 | T | N, H]: row i uses cond[i % K]
        log_prob = fused_step_log_prob(
            net,
            obs.reshape(-1, net.dim),
            action.reshape(-1, net.dim),
            cond,
            self.step.dt,
            std,
        )
        return log_prob.reshape(time.shape)

    def trajectory_log_prob(self, td: TensorDictBase) -> torch.Tensor:
        """Sum of :meth:`transition_log_prob` over the last batch dim: ``[B, T] -> [B]`` nats."""
        return self.transition_log_prob(td).sum(-1)

    def sample_trajectories(
        self,
        num: int,
        *,
        extra_std: float | None = None,
        log_reward: Callable[[torch.Tensor], torch.Tensor] | None = gmm_log_reward,
        reference: DriftNetwork | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TensorDict:
        """Sample ``num`` full trajectories without autograd -> TensorDict ``[num, T]``.

        See :func:`sample_trajectories`; ``extra_std`` defaults to this actor's; ``reference`` (a
        prior's drift network) adds its per-step log-densities as ``ref_log_prob`` ``[num, T]``.
        """
        return sample_trajectories(
            self.drift_net,
            num,
            sigma2=self.step.sigma2,
            num_steps=self.step.num_steps,
            extra_std=self.extra_std if extra_std is None else extra_std,
            log_reward=log_reward,
            reference=reference,
            generator=generator,
            device=device,
        )


def time_grid(num_steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Times ``t_i = i/T`` for ``i = 0..T`` -> ``[T + 1]`` float32."""
    return torch.arange(num_steps + 1, device=device, dtype=torch.float32) / num_steps


@torch.no_grad()
def integrate(
    drift_net: DriftNetwork,
    num: int,
    *,
    sigma2: float = SIGMA2,
    num_steps: int = NUM_STEPS,
    extra_std: float = 0.0,
    drift_correction: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Run the sampler from ``x_0 = 0``: returns ``(xs [num, T + 1, 2], noise [num, T, 2], std)``.

    ``x_{i+1} = x_i + dt·(f(x_i, t_i) + c(x_i, i)) + noise_i`` with ``noise_i ~ N(0, std²·I)``,
    ``std = sqrt(σ²·dt + extra_std²)``, ``c`` the optional ``drift_correction(x, i)``. The time
    embedding of all T steps is computed in one call; the noise is drawn in one call.
    """
    xs, noise, std, _ = _integrate(
        drift_net,
        num,
        sigma2=sigma2,
        num_steps=num_steps,
        extra_std=extra_std,
        drift_correction=drift_correction,
        generator=generator,
        device=device,
    )
    return xs, noise, std


def _integrate(
    drift_net: DriftNetwork,
    num: int,
    *,
    sigma2: float,
    num_steps: int,
    extra_std: float,
    drift_correction: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    reference: DriftNetwork | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    """:func:`integrate`, plus the log-density ``[num, T]`` of every transition under
    ``reference`` (policy std ``sqrt(σ²·dt)``) when given (else ``None``); the fused sampler
    scores it, so ``reference`` and ``drift_correction`` do not go together."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if reference is not None and drift_correction is not None:
        raise ValueError("a reference is scored by the fused sampler, without drift_correction")
    if device is None:
        device = next(drift_net.parameters()).device
    dt = 1.0 / num_steps
    std = math.sqrt(sigma2 * dt + extra_std**2)
    t_emb = drift_net.time_embedding(time_grid(num_steps, device)[:-1])  # [T, H]
    noise = torch.randn(num, num_steps, 2, generator=generator, device=device).mul_(std)
    if drift_correction is None:
        ref = None if reference is None else (reference, math.sqrt(sigma2 * dt))
        xs, ref_log_prob = _integrate_fused(drift_net, t_emb, noise, dt, ref)
        return xs, noise, std, ref_log_prob
    xs = torch.zeros(num, num_steps + 1, 2, device=device)
    x = xs[:, 0]
    for i in range(num_steps):
        drift = drift_net.drift_from_embedding(x, t_emb[i])
        with torch.enable_grad():
            drift = drift + drift_correction(x, i)
        x = x + dt * drift + noise[:, i]
        xs[:, i + 1] = x
    return xs, noise, std, None


#: Rows (steps × trajectories) per block of the prior's scoring on the side thread.
SIDE_JOB_ROWS = 4096


def _integrate_fused(
    net: DriftNetwork,
    t_emb: torch.Tensor,
    noise: torch.Tensor,
    dt: float,
    reference: tuple[DriftNetwork, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Euler-Maruyama loop with the network unrolled into fused ``addmm`` calls: the state
    embedding's bias is folded into the time embedding, ``dt`` and the output bias into the last
    layer and the noise. Same result as ``x + dt·f(x, t) + noise`` step by step -> ``xs [N, T + 1, 2]``
    and, for ``reference = (net, std)``, ``log N(x_{i+1}; x_i + dt·net(x_i, t_i), std²·I)``
    ``[N, T]`` (else ``None``).

    For a trainable network the hidden activations of every step are written into ``[T, N, H]``
    tables the network's :class:`~zarrl.envs.gmm_posterior.scoring.SampledActivations` keeps, so
    scoring these very transitions with the same parameters skips the posterior's forward pass;
    the pre-activation tables hold GELU derivatives instead, for the backward pass
    (:mod:`~zarrl.envs.gmm_posterior.native_gelu`). When the compiled kernels support the network
    (:mod:`~zarrl.envs.gmm_posterior.native_mlp`) the whole loop, the tables (four: the backward recomputes the
    first layer) and the reference scoring are one kernel call; otherwise, on a multi-core CPU, the
    reference scoring runs on a side thread, block by block behind the sampler
    (:mod:`~zarrl.envs.gmm_posterior.side_thread`)."""
    num, num_steps, dim = noise.shape
    hidden = t_emb.shape[-1]
    keep = net.builds_graph() and 6 * noise[..., :1].numel() * hidden * noise.element_size() <= (
        MAX_KEPT_ACTIVATION_BYTES
    )
    if native_mlp_supports(net, noise, t_emb) and (
        reference is None or native_mlp_supports(reference[0])
    ):
        net.sampled.forget()
        tables = None
        if keep:  # the compiled backward recomputes the first layer: four tables suffice
            tables = net.sampled.tables((num_steps, num, hidden), noise, first_layer=False)
        ref = None
        if reference is not None:
            ref_net, ref_std = reference
            ref_emb = ref_net.time_embedding(time_grid(num_steps, noise.device)[:-1])
            ref = (ref_net, ref_emb, ref_std)
        drift = noise.new_empty(num_steps, num, dim) if keep else None
        xs, ref_log_prob = mlp_sample(net, t_emb, noise, dt, tables, ref, drift)
        if keep:
            net.sampled.keep(net, xs, tables, drift)
        return xs.transpose(0, 1), ref_log_prob
    embed, l1, l2, out = net.state_embed, net.trunk[1], net.trunk[3], net.trunk[5]
    cond = t_emb + embed.bias  # [T, H]
    w_in, w1, w2 = embed.weight.t(), l1.weight.t(), l2.weight.t()
    w_out_t = out.weight * dt  # [D, H]; used transposed (MKL's thin product is 2x faster so)
    shift = (noise + out.bias * dt).transpose(0, 1).contiguous()  # [T, N, D]
    xs = noise.new_zeros(num_steps + 1, num, dim)
    net.sampled.forget()
    tables = net.sampled.tables((num_steps if keep else 1, num, hidden), noise)
    side = _SideWork(xs, reference, dt)
    on_side = side.needed and side_thread_helps(noise.device)
    block = max(1, SIDE_JOB_ROWS // num)
    start = 0
    # kept pre-activation tables receive GELU'(h) in place: the backward pass multiplies by it
    # (the biases are added inside the GELU pass: no broadcast copy per product)
    act = (lambda h, g, b: gelu_and_grad(h, g, h, b)) if keep else (lambda h, g, b: gelu_(h, g, b))
    b1, b2, w_out = l1.bias.detach(), l2.bias.detach(), w_out_t.t()
    rows = [tuple(table[i if keep else 0] for table in tables) for i in range(num_steps)]
    with caller_single_threaded() if on_side else nullcontext():
        for i, (h0, g0, h1, g1, h2, g2) in enumerate(rows):
            act(torch.mm(xs[i], w_in, out=h0), g0, cond[i])
            act(torch.mm(g0, w1, out=h1), g1, b1)
            act(torch.mm(g1, w2, out=h2), g2, b2)
            torch.addmm(xs[i] + shift[i], g2, w_out, out=xs[i + 1])
            if on_side and (i + 1 - start >= block or i + 1 == num_steps):
                side.submit(start, i + 1)
                start = i + 1
        if not on_side and side.needed:
            side.run(0, num_steps)
        ref_log_prob = side.finish()
    if keep:
        net.sampled.keep(net, xs, tables)
    return xs.transpose(0, 1), ref_log_prob


class _SideWork:
    """The reference's log-densities of the sampler's finished steps, as a queue of step blocks
    ``[i0, i1)``: the side thread drains it while the sampler runs, and :meth:`finish` has the
    caller take its share of what is left, so both threads end together."""

    def __init__(
        self, xs: torch.Tensor, reference: tuple[DriftNetwork, float] | None, dt: float
    ) -> None:
        self.xs, self.dt, self.reference = xs, dt, reference
        self.ref_log_prob = None
        self.pending: deque[tuple[int, int]] = deque()
        self.lock = threading.Lock()
        self.draining: Future | None = None
        if reference is not None:
            num_steps = xs.shape[0] - 1
            self.ref_emb = reference[0].time_embedding(time_grid(num_steps, xs.device)[:-1])
            self.ref_log_prob = xs.new_empty(num_steps, xs.shape[1])

    @property
    def needed(self) -> bool:
        return self.reference is not None

    @torch.no_grad()
    def run(self, i0: int, i1: int) -> None:
        net, std = self.reference
        x = self.xs[i0:i1]  # [k, N, D]
        loc = net.drift_no_graph(x, self.ref_emb[i0:i1].unsqueeze(1)).mul_(self.dt).add_(x)
        self.ref_log_prob[i0:i1] = gaussian_step_log_prob(self.xs[i0 + 1 : i1 + 1], loc, std)

    def _next(self, newest: bool) -> tuple[int, int] | None:
        with self.lock:
            if not self.pending:
                self.draining = None if not newest else self.draining
                return None
            return self.pending.pop() if newest else self.pending.popleft()

    def _drain(self) -> None:
        while (block := self._next(newest=False)) is not None:
            self.run(*block)

    def submit(self, i0: int, i1: int) -> None:
        with self.lock:
            self.pending.append((i0, i1))
            if self.draining is None:
                self.draining = side_executor().submit(self._drain)

    def finish(self) -> torch.Tensor | None:
        """Runs the blocks still queued (newest first, the side thread takes the oldest), waits
        for the side thread -> reference log-densities ``[N, T]`` (or ``None``)."""
        while (block := self._next(newest=True)) is not None:
            self.run(*block)
        with self.lock:
            draining = self.draining
        if draining is not None:
            draining.result()
        return None if self.ref_log_prob is None else self.ref_log_prob.t()


def trajectories_to_tensordict(
    xs: torch.Tensor,
    behaviour_log_prob: torch.Tensor,
    log_reward: Callable[[torch.Tensor], torch.Tensor] | None = gmm_log_reward,
) -> TensorDict:
    """Pack ``xs: [N, T + 1, 2]`` into the env's ``[N, T]`` key layout.

    Keys: ``observation`` ``[N, T, 2]``, ``time`` ``[N, T, 1]``, ``action`` ``[N, T, 2]``,
    ``action_log_prob`` ``[N, T]``, ``done``/``terminated`` ``[N, T, 1]`` (False), and under ``next``:
    ``observation``, ``time``, ``reward`` ``[N, T, 1]`` (``log r(x_T)`` at the last step, else 0),
    ``done``/``terminated`` (True at the last step).
    """
    n, t1, _ = xs.shape
    num_steps = t1 - 1
    device = xs.device
    times = time_grid(num_steps, device).view(1, t1, 1).expand(n, t1, 1)
    reward = torch.zeros(n, num_steps, 1, device=device)
    if log_reward is not None:
        reward[:, -1, 0] = log_reward(xs[:, -1])
    last = torch.zeros(n, num_steps, 1, dtype=torch.bool, device=device)
    last[:, -1] = True
    not_done = torch.zeros_like(last)
    return TensorDict(
        {
            "observation": xs[:, :-1],
            "time": times[:, :-1],
            "action": xs[:, 1:],
            "action_log_prob": behaviour_log_prob,
            "done": not_done,
            "terminated": not_done.clone(),
            "next": TensorDict(
                {
                    "observation": xs[:, 1:],
                    "time": times[:, 1:],
                    "reward": reward,
                    "done": last,
                    "terminated": last.clone(),
                },
                batch_size=[n, num_steps],
            ),
        },
        batch_size=[n, num_steps],
        device=device,
    )


@torch.no_grad()
def sample_trajectories(
    drift_net: DriftNetwork,
    num: int,
    *,
    sigma2: float = SIGMA2,
    num_steps: int = NUM_STEPS,
    extra_std: float = 0.0,
    log_reward: Callable[[torch.Tensor], torch.Tensor] | None = gmm_log_reward,
    reference: DriftNetwork | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorDict:
    """Sample ``num`` full trajectories without autograd -> TensorDict ``[num, T]`` in the env's key
    layout (see :func:`trajectories_to_tensordict`), with ``action_log_prob`` of the behaviour policy
    (std ``sqrt(σ²·dt + extra_std²)``). Terminal reward ``log_reward(x_T)`` (``None``: all zeros).

    ``reference``: a fixed drift network (a prior) whose log-density of every transition, under the
    policy's own std ``sqrt(σ²·dt)``, is added as ``ref_log_prob`` ``[num, T]`` (nats) — computed
    while sampling (in the compiled sampler's pass, or on a side thread of the ATen path), so a loss
    against that fixed prior need not score the batch again (see :class:`~zarrl.algorithms.RTBLoss`'s ``ref_log_prob`` key).
    """
    xs, noise, std, ref_log_prob = _integrate(
        drift_net,
        num,
        sigma2=sigma2,
        num_steps=num_steps,
        extra_std=extra_std,
        reference=reference,
        generator=generator,
        device=device,
    )
    log_prob = gaussian_step_log_prob(noise, torch.zeros((), device=noise.device), std)
    td = trajectories_to_tensordict(xs, log_prob, log_reward)
    if ref_log_prob is not None:
        td.set("ref_log_prob", ref_log_prob)
    return td
