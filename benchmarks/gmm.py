"""Seconds per fine-tuning update of the GMM posterior experiment at batch 500, split into its parts:
sampling (no-grad, with exploration), the Zarr replay buffer (write the batch, read it back),
scoring (the loss forward: all B·T transitions under posterior and prior), backward + Adam step.
Median and min over ``--repeats`` updates after ``--warmup``; the threads are stated.

    python benchmarks/gmm.py [--methods rtb,kl-reinforce-off-policy] [--threads 1] [--repeats 30]
                             [--device cpu|cuda]

On CUDA every part boundary synchronizes the device, so the parts are wall times of finished work.

The reference implementation, measured on this kind of 2-core CPU: median 0.20–0.35 s per RTB update
(typically 0.24 s); target here ≤ 0.07 s (the "vs ref" column divides 0.24 s by the median).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from zarrl.engine.gmm_config import load_gmm_config, method_config_path
from zarrl.engine.gmm_methods import build_learner, exploration_std
from zarrl.engine.gmm_runner import _open_buffer, pack_trajectories, unpack_trajectories
from zarrl.engine.layout import RunLayout
from zarrl.envs import DEFAULT_PRIOR_PATH, DriftNetwork, load_prior

REFERENCE_MEDIAN_S = 0.24
PARTS = ("sampling", "buffer", "scoring", "backward+step")


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def bench_method(
    method: str, prior, batch: int, repeats: int, warmup: int, folder: Path, device: torch.device
):
    config = load_gmm_config(
        method_config_path(method),
        [f"train.batch_size={batch}", f"buffer.max_size={4 * batch}", f"run.device={device}"],
    )
    torch.manual_seed(0)
    learner = build_learner(config, prior, device)
    buffer = _open_buffer(config, RunLayout(folder / method))
    e = exploration_std(0, config.train)
    times: dict[str, list[float]] = {p: [] for p in (*PARTS, "total")}
    for i in range(warmup + repeats):
        t0 = _clock(device)
        td = learner.actor.sample_trajectories(batch, extra_std=e)
        t1 = _clock(device)
        rows = buffer.storage.get(buffer.extend(pack_trajectories(td).cpu()))
        batch_td = unpack_trajectories(rows.to(device))
        t2 = _clock(device)
        loss = learner.loss(batch_td).get("loss_objective")
        t3 = _clock(device)
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        learner.optimizer.step()
        t4 = _clock(device)
        if i >= warmup:
            for part, dt in zip((*PARTS, "total"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[part].append(dt)
    buffer.storage.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="rtb,trust-pcl-equivalent,kl-reinforce-off-policy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prior", default=None, help="prior checkpoint (default: the shipped one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    path = Path(args.prior) if args.prior else DEFAULT_PRIOR_PATH
    prior = load_prior(path) if path.is_file() else DriftNetwork().requires_grad_(False)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"GMM fine-tuning update, batch {args.batch}, T = 100, torch {torch.__version__}, {where}, "
        f"{torch.get_num_threads()} thread(s), {args.repeats} updates after {args.warmup} warm-up, "
        f"prior {path.name if path.is_file() else '(untrained: prior checkpoint missing)'}"
    )
    header = f"{'method':<26}" + "".join(f"{p:>15}" for p in PARTS)
    header += f"{'median s':>10}{'min s':>8}{'vs ref':>8}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            t = bench_method(
                method, prior, args.batch, args.repeats, args.warmup, Path(tmp), device
            )
            med = statistics.median(t["total"])
            line = f"{method:<26}" + "".join(f"{statistics.median(t[p]):>15.4f}" for p in PARTS)
            line += f"{med:>10.4f}{min(t['total']):>8.4f}{REFERENCE_MEDIAN_S / med:>7.1f}x"
            print(line)
    print(
        "parts are medians (s); 'vs ref' = 0.24 s (reference implementation's typical median) / "
        "median; target <= 0.07 s"
    )


if __name__ == "__main__":
    main()
