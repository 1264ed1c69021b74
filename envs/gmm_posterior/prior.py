"""Pre-training of the GMM task's diffusion prior by maximum likelihood on Brownian-bridge-noised data,
and the shipped checkpoint (``envs/gmm_posterior/data/gmm_prior.pt``).

Regenerate the shipped checkpoint with::

    python -m zarrl.envs.gmm_posterior.prior --out envs/gmm_posterior/data/gmm_prior.pt

Each update draws ``B`` data points x₁ ~ p₂₅, noises each backward to 0 along a Brownian bridge with
diffusion coefficient σ² (all T steps in one vectorized draw), and minimizes the negative
log-likelihood of all ``B·T`` forward transitions under the policy in one batched call.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .mixtures import sample_prior
from .policy import (
    NUM_STEPS,
    SIGMA2,
    DriftNetwork,
    gaussian_step_log_prob,
    sample_trajectories,
    time_grid,
)

#: Path of the shipped prior checkpoint.
DEFAULT_PRIOR_PATH = Path(__file__).resolve().parent / "data" / "gmm_prior.pt"


def brownian_bridge_paths(
    x1: torch.Tensor,
    *,
    sigma2: float = SIGMA2,
    num_steps: int = NUM_STEPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Brownian-bridge paths from 0 at t = 0 to ``x1: [B, 2]`` at t = 1 -> ``[B, T + 1, 2]``.

    Same law as noising x₁ backward step by step (from t to t − dt: mean x·(t − dt)/t, variance
    σ²·dt·(t − dt)/t, last step to 0), drawn at once as ``W_t − t·W₁ + t·x₁`` with W a Brownian motion
    of variance σ²·t.
    """
    if x1.ndim != 2:
        raise ValueError(f"x1 must have shape [B, D], got {tuple(x1.shape)}")
    b, d = x1.shape
    dt = 1.0 / num_steps
    t = time_grid(num_steps, x1.device).view(1, -1, 1)  # [1, T + 1, 1]
    steps = torch.randn(b, num_steps, d, generator=generator, device=x1.device) * math.sqrt(
        sigma2 * dt
    )
    w = torch.cat([x1.new_zeros(b, 1, d), steps.cumsum(1)], dim=1)  # [B, T + 1, D]
    return w - t * w[:, -1:] + t * x1.unsqueeze(1)


def path_log_likelihood(
    drift_net: DriftNetwork,
    xs: torch.Tensor,
    *,
    sigma2: float = SIGMA2,
) -> torch.Tensor:
    """log-likelihood (nats) of paths ``xs: [B, T + 1, 2]`` under the Gaussian policy with std
    ``sqrt(σ²·dt)``: all ``B·T`` transitions scored in one call -> ``[B]``."""
    num_steps = xs.shape[1] - 1
    dt = 1.0 / num_steps
    t_emb = drift_net.time_embedding(time_grid(num_steps, xs.device)[:-1])  # [T, H]
    obs = xs[:, :-1]
    loc = obs + dt * drift_net.drift_from_embedding(obs, t_emb)
    return gaussian_step_log_prob(xs[:, 1:], loc, math.sqrt(sigma2 * dt)).sum(-1)


def pretrain_prior(
    *,
    num_updates: int = 10_000,
    batch_size: int = 500,
    lr: float = 1e-3,
    final_lr_fraction: float = 0.1,
    seed: int = 0,
    sigma2: float = SIGMA2,
    num_steps: int = NUM_STEPS,
    device: torch.device | str = "cpu",
    drift_net: DriftNetwork | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> DriftNetwork:
    """Train a drift network by maximum likelihood on bridge-noised p₂₅ data.

    Adam with learning rate ``lr`` decayed along a cosine to ``final_lr_fraction·lr``.
    ``callback(update, mean_nll_per_trajectory)`` is called after every update.
    """
    if num_updates < 1 or batch_size < 1:
        raise ValueError(
            f"num_updates and batch_size must be >= 1, got {num_updates}, {batch_size}"
        )
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    net = (drift_net or DriftNetwork()).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=num_updates, eta_min=final_lr_fraction * lr
    )
    for update in range(num_updates):
        x1 = sample_prior(batch_size, generator=generator, device=device)
        xs = brownian_bridge_paths(x1, sigma2=sigma2, num_steps=num_steps, generator=generator)
        loss = -path_log_likelihood(net, xs, sigma2=sigma2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if callback is not None:
            callback(update, float(loss.detach()))
    return net


def network_config(net: DriftNetwork) -> dict[str, int]:
    return {
        "hidden": net.state_embed.out_features,
        "num_freqs": net.time_features.freqs.shape[0],
        "dim": net.dim,
    }


def save_prior(net: DriftNetwork, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``{"state_dict", "config", "metadata"}`` (tensors and plain Python values only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save(
        {"state_dict": state, "config": network_config(net), "metadata": metadata or {}}, path
    )


def load_prior(path: str | Path | None = None, device: torch.device | str = "cpu") -> DriftNetwork:
    """Load a prior drift network (default: the shipped checkpoint) with ``weights_only=True``.

    The returned network is in eval mode with ``requires_grad`` off (a fixed prior).
    """
    path = Path(path) if path is not None else DEFAULT_PRIOR_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"no prior checkpoint at {path}; regenerate it with `python -m zarrl.envs.gmm_posterior.prior`"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "config"):
        if key not in ckpt:
            raise KeyError(f"prior checkpoint {path} lacks {key!r}; found keys {sorted(ckpt)}")
    net = DriftNetwork(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    net.requires_grad_(False)
    return net.eval().to(device)


def load_prior_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """The ``metadata`` dict stored with a prior checkpoint."""
    path = Path(path) if path is not None else DEFAULT_PRIOR_PATH
    return torch.load(path, map_location="cpu", weights_only=True).get("metadata", {})


def evaluate_prior(net: DriftNetwork, num: int = 2000, seed: int = 1) -> dict[str, float]:
    """Task metrics of ``num`` samples of the prior (near-mode share, target mass, W₂ to p₂₅ and g₉)."""
    from .metrics import task_metrics, wasserstein2
    from .mixtures import sample_target

    gen = torch.Generator().manual_seed(seed)
    net_cpu = net.to("cpu")
    x = sample_trajectories(net_cpu, num, generator=gen)["next", "observation"][:, -1]
    out = task_metrics(x, reference=sample_target(num, generator=gen))
    out["w2_to_g9"] = out.pop("w2")
    out["w2_to_p25"] = wasserstein2(x, sample_prior(num, generator=gen, stratified=True))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PRIOR_PATH)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--final-lr-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-every", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    window: list[float] = []

    def log(update: int, loss: float) -> None:
        window.append(loss)
        if (update + 1) % args.log_every == 0:
            elapsed = time.perf_counter() - start
            print(
                f"update {update + 1:6d}  nll/trajectory {sum(window) / len(window):9.3f}  "
                f"{(update + 1) / elapsed:6.1f} updates/s",
                flush=True,
            )
            window.clear()

    net = pretrain_prior(
        num_updates=args.updates,
        batch_size=args.batch_size,
        lr=args.lr,
        final_lr_fraction=args.final_lr_fraction,
        seed=args.seed,
        device=args.device,
        callback=log,
    )
    wall = time.perf_counter() - start
    metrics = evaluate_prior(net)
    print({k: round(v, 4) for k, v in metrics.items()}, flush=True)
    metadata = {
        "updates": args.updates,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "final_lr_fraction": args.final_lr_fraction,
        "seed": args.seed,
        "wall_s": round(wall, 1),
        "metrics": metrics,
        "command": " ".join(["python -m zarrl.envs.gmm_posterior.prior", *(argv or sys.argv[1:])]),
    }
    save_prior(net, args.out, metadata)
    print(f"saved {args.out} after {wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
