"""Environment benchmarks: collector throughput on CartPole (single vs vectorized), the diffusion
sampler at N = 500 (TorchRL env + collector vs the fast no-grad sampler), prior pre-training updates,
and one RTB-shaped fine-tuning update at batch 500 (reference-style step-by-step loop with autograd vs
batched scoring), all measured side by side in one run.

    python benchmarks/envs.py [--threads 2] [--repeats 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torchrl.collectors import Collector
from zarrl.envs.gmm_posterior.env import DiffusionSamplerEnv
from zarrl.envs.gmm_posterior.mixtures import log_reward, sample_prior
from zarrl.envs.gmm_posterior.policy import (
    NUM_STEPS,
    SIGMA2,
    DiffusionActor,
    DriftNetwork,
    gaussian_step_log_prob,
)
from zarrl.envs.gmm_posterior.prior import brownian_bridge_paths, path_log_likelihood
from zarrl.envs.gym_envs import make_env


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def collector_fps(num_envs: int, frames: int) -> float:
    env = make_env("CartPole-v1", num_envs=num_envs, seed=0)
    collector = Collector(env, None, frames_per_batch=frames // 4, total_frames=frames)
    it = iter(collector)
    next(it)  # warm-up batch
    start = time.perf_counter()
    n = sum(batch.numel() for batch in it)
    fps = n / (time.perf_counter() - start)
    collector.shutdown()
    return fps


def diffusion_collector_traj_per_s(actor: DiffusionActor, num: int, batches: int) -> float:
    env = DiffusionSamplerEnv(num)
    collector = Collector(
        env, actor, frames_per_batch=num * NUM_STEPS, total_frames=(batches + 1) * num * NUM_STEPS
    )
    it = iter(collector)
    next(it)
    start = time.perf_counter()
    n = sum(batch.shape[0] for batch in it)
    rate = n / (time.perf_counter() - start)
    collector.shutdown()
    return rate


class ReferenceStyleUpdate:
    """The public implementation's update shape: sample with autograd through the 100-step loop,
    accumulating log q step by step, re-score the path step by step under a prior whose parameters
    still build a graph, then backward through everything."""

    def __init__(self, post: DriftNetwork, prior: DriftNetwork, batch: int, extra_std: float):
        self.post, self.prior, self.batch, self.extra_std = post, prior, batch, extra_std
        self.log_z = torch.zeros((), requires_grad=True)
        self.opt = torch.optim.Adam(
            [{"params": post.parameters(), "lr": 1e-3}, {"params": [self.log_z], "lr": 0.1}]
        )

    def __call__(self) -> None:
        dt = 1.0 / NUM_STEPS
        std = (SIGMA2 * dt) ** 0.5
        behaviour_std = (SIGMA2 * dt + self.extra_std**2) ** 0.5
        x = torch.zeros(self.batch, 2)
        log_q = torch.zeros(self.batch)
        log_p = torch.zeros(self.batch)
        for i in range(NUM_STEPS):
            t = torch.full((self.batch, 1), i * dt)
            loc_q = x + dt * self.post(x, t)
            x_next = (loc_q + behaviour_std * torch.randn_like(x)).detach()
            log_q = log_q + gaussian_step_log_prob(x_next, loc_q, std)
            loc_p = x + dt * self.prior(x, t)
            log_p = log_p + gaussian_step_log_prob(x_next, loc_p, std)
            x = x_next
        loss = (self.log_z + log_q - log_p - log_reward(x)).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class BatchedUpdate:
    """zarrl's update shape: no-grad sampling, then one batched scoring call each for the
    posterior (with autograd) and the prior (without), then backward + Adam."""

    def __init__(self, post: DriftNetwork, prior: DriftNetwork, batch: int, extra_std: float):
        self.post = DiffusionActor(post, extra_std=extra_std)
        self.prior = DiffusionActor(prior)
        self.batch = batch
        self.log_z = torch.zeros((), requires_grad=True)
        self.opt = torch.optim.Adam(
            [{"params": post.parameters(), "lr": 1e-3}, {"params": [self.log_z], "lr": 0.1}]
        )
        self.parts = {"sampling": [], "scoring": [], "backward+step": []}

    def __call__(self) -> None:
        t0 = time.perf_counter()
        td = self.post.sample_trajectories(self.batch)
        t1 = time.perf_counter()
        log_q = self.post.trajectory_log_prob(td)
        with torch.no_grad():
            log_p = self.prior.trajectory_log_prob(td)
        t2 = time.perf_counter()
        log_r = td["next", "reward"][:, -1, 0]
        loss = (self.log_z + log_q - log_p - log_r).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        t3 = time.perf_counter()
        for key, value in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2)):
            self.parts[key].append(value)


def pretrain_step_fn(net: DriftNetwork, batch: int) -> Callable[[], None]:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        xs = brownian_bridge_paths(sample_prior(batch))
        loss = -path_log_likelihood(net, xs).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[tuple[str, str, str]] = []

    fps1 = collector_fps(1, 4000)
    fps8 = collector_fps(8, 16000)
    rows.append(("CartPole-v1 collector, random policy, 1 env", f"{fps1:,.0f} frames/s", "1.00×"))
    rows.append(
        ("CartPole-v1 collector, 8-env vector env", f"{fps8:,.0f} frames/s", f"{fps8 / fps1:.2f}×")
    )

    post = DriftNetwork()
    torch.nn.init.normal_(post.trunk[-1].weight, std=0.1)
    prior = copy.deepcopy(post)
    actor = DiffusionActor(post, extra_std=0.5)
    n = args.batch
    with torch.no_grad():
        env_rate = diffusion_collector_traj_per_s(actor, n, 2)
    fast_med, _ = timed(lambda: actor.sample_trajectories(n), max(5, args.repeats // 3))
    fast_rate = n / fast_med
    rows.append(
        (f"diffusion env N={n}: Collector + DiffusionActor", f"{env_rate:,.0f} traj/s", "1.00×")
    )
    rows.append(
        (
            f"diffusion N={n}: fast no-grad sampler",
            f"{fast_rate:,.0f} traj/s",
            f"{fast_rate / env_rate:.2f}×",
        )
    )

    pre_med, _ = timed(pretrain_step_fn(copy.deepcopy(prior), n), max(5, args.repeats // 3))
    rows.append(
        (
            f"prior pre-training, batch {n} (all {n}·{NUM_STEPS} transitions)",
            f"{1 / pre_med:.1f} updates/s",
            "",
        )
    )

    ref = ReferenceStyleUpdate(
        copy.deepcopy(post), copy.deepcopy(prior).requires_grad_(True), n, 0.5
    )
    ref_med, ref_min = timed(ref, max(5, args.repeats // 3))
    ours = BatchedUpdate(copy.deepcopy(post), copy.deepcopy(prior).requires_grad_(False), n, 0.5)
    ours_med, ours_min = timed(ours, args.repeats)
    rows.append(
        (
            f"RTB-shaped update, batch {n}: step-by-step with autograd (reference shape)",
            f"{ref_med:.3f} s (min {ref_min:.3f})",
            "1.00×",
        )
    )
    rows.append(
        (
            f"RTB-shaped update, batch {n}: batched scoring (zarrl)",
            f"{ours_med:.3f} s (min {ours_min:.3f})",
            f"{ref_med / ours_med:.2f}× faster",
        )
    )
    for part, values in ours.parts.items():
        values = values[-args.repeats :]
        rows.append((f"  of which {part}", f"{statistics.median(values):.3f} s", ""))

    width = max(len(r[0]) for r in rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    print(f"| {'measurement':<{width}} | {'figure':>22} | {'ratio':>12} |")
    print(f"|{'-' * (width + 2)}|{'-' * 24}|{'-' * 14}|")
    for name, fig, ratio in rows:
        print(f"| {name:<{width}} | {fig:>22} | {ratio:>12} |")


if __name__ == "__main__":
    main()
