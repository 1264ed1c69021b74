"""Training one method with one seed on the GMM posterior task, through a Zarr replay buffer.

Each update: sample ``B·(1 − ρ)`` fresh trajectories without autograd (exploration std from the
schedule), write them into a :class:`~zarrl.buffers.ZarrStorage` (one compact row per trajectory:
the path ``[T + 1, 2]``, the behaviour log-probability ``[T]`` and ``log r(x_T)``), read the batch
back from the buffer (plus ``ρ·B`` older trajectories sampled uniformly when the replay ratio ρ > 0),
then one loss call scoring all ``B·T`` transitions, backward and Adam.

The method/seed folder (a :class:`~zarrl.engine.layout.RunLayout`) holds ``config.yaml``,
``buffer.zarr``, ``checkpoints/last.pt`` (resume point), ``curve.csv`` (a row every
``train.eval_every`` updates), ``samples.pt`` (final on-policy samples) and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler
from tqdm.auto import tqdm
from zarrl.buffers import ZarrStorage
from zarrl.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from zarrl.engine.experiments.gmm_posterior.config import GMMConfig
from zarrl.engine.experiments.gmm_posterior.methods import (
    GMMLearner,
    build_learner,
    exploration_std,
)
from zarrl.engine.layout import RunLayout
from zarrl.envs.gmm_posterior import (
    classifier_guidance_sample,
    load_prior,
    sample_target,
    task_metrics,
)
from zarrl.envs.gmm_posterior.policy import trajectories_to_tensordict

__all__ = [
    "CURVE_FIELDS",
    "evaluate_learner",
    "pack_trajectories",
    "resolve_device",
    "run_method",
    "unpack_trajectories",
]

#: Columns of ``curve.csv`` (the 9 ``weight_k`` mode weights follow).
CURVE_FIELDS = [
    "update",
    "train_s",
    "loss",
    "log_z",
    "explore_std",
    "near_mode",
    "target_mass",
    "wrong_mode_mass",
    "modes_hit",
    "tv",
    "elbo",
    "is_log_z",
    "w2",
] + [f"weight_{k}" for k in range(9)]

_EVAL_SEED = 1_000_003


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
def evaluate_learner(
    learner: GMMLearner, num: int, seed: int, *, w2: bool = True
) -> tuple[dict[str, float], torch.Tensor]:
    """Task metrics of ``num`` on-policy samples (no exploration) -> ``(metrics, x_T [num, 2])``.

    ELBO and IS log Ẑ use log q of the sampler itself (the guided sampler for guidance) and log p
    of the prior, both scored in batched calls."""
    device = next(learner.prior.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    if learner.actor is None:
        td = classifier_guidance_sample(
            learner.prior.drift_net,
            num,
            scale=learner.guidance_scale or 0.0,
            generator=gen,
            device=device,
        )
        log_p = learner.prior.trajectory_log_prob(td)
    else:  # the prior scores the samples while they are drawn
        td = learner.actor.sample_trajectories(
            num, extra_std=0.0, reference=learner.prior.drift_net, generator=gen, device=device
        )
        log_p = td.get("ref_log_prob").sum(-1)
    log_q = td.get("action_log_prob").sum(-1)
    log_r = td.get(("next", "reward"))[:, -1, 0]
    x = td.get(("next", "observation"))[:, -1].cpu()
    reference = None
    if w2:
        reference = sample_target(num, generator=torch.Generator().manual_seed(seed + 1))
    metrics = task_metrics(x, reference, log_p.cpu(), log_q.cpu(), log_r.cpu())
    return metrics, x


class _Curve:
    """``curve.csv``: rows appended as they come; on resume, rows past the checkpoint dropped."""

    def __init__(self, path: Path, resume_update: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_update is not None and path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["update"]) <= resume_update]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CURVE_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=CURVE_FIELDS, extrasaction="ignore").writerow(
                {k: row.get(k, math.nan) for k in CURVE_FIELDS}
            )


def _open_buffer(config: GMMConfig, layout: RunLayout) -> ReplayBuffer:
    path = Path(config.buffer.path) if config.buffer.path else layout.default_buffer
    storage = ZarrStorage(
        config.buffer.max_size,
        path=path,
        existsok=True,
        cache=config.buffer.cache,
        compressors=None if config.buffer.compress else [],
        # a fresh batch fills whole chunks: one file per array and update, no chunk rewritten
        chunk_rows=config.buffer.chunk_rows or config.train.batch_size,
    )
    return ReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=None)


def run_method(
    config: GMMConfig,
    folder: str | Path,
    *,
    prior_net=None,
    position: int = 0,
) -> dict[str, Any]:
    """Train (or, for guidance, just evaluate) ``config``'s method with seed ``config.run.seed``
    in ``folder``; resumes from ``checkpoints/last.pt`` when present and returns the summary
    (final task metrics, learned log Z, ``train_s``, ``updates_per_s``; also ``summary.json``).

    ``prior_net``: a loaded prior drift network (default: ``load_prior(config.prior)``).
    """
    layout = RunLayout(Path(folder))
    layout.root.mkdir(parents=True, exist_ok=True)
    if layout.summary.is_file():
        summary = json.loads(layout.summary.read_text())
        expected = 0 if config.name == "guidance" else config.train.updates
        if summary.get("updates") == expected and summary.get("method") == config.name:
            return summary
    if config.run.num_threads > 0:
        torch.set_num_threads(config.run.num_threads)
    device = resolve_device(config.run.device)
    seed = config.run.seed
    if prior_net is None:
        prior_net = load_prior(config.prior, device=device)
    torch.manual_seed(seed)
    learner = build_learner(config, prior_net, device)
    config.save(layout.config)
    train = config.train
    updates = train.updates if learner.trains else 0

    start, train_s, loss_sum, loss_n = 0, 0.0, 0.0, 0
    gen = torch.Generator(device=device).manual_seed(seed)
    resume = layout.has_checkpoint() and learner.trains
    if resume:
        ckpt = load_checkpoint(layout.last_checkpoint, map_location=device)
        learner.load_state_dict(ckpt["modules"])
        restore_rng_state(ckpt["rng"])
        gen.set_state(ckpt["extra"]["generator"].to(gen.get_state().device))
        start, train_s = int(ckpt["counters"]["update"]), float(ckpt["counters"]["train_s"])
    curve = _Curve(layout.root / "curve.csv", start if resume else None)
    buffer = _open_buffer(config, layout) if learner.trains else None

    def save(update: int) -> None:
        save_checkpoint(
            layout.last_checkpoint,
            {
                "config": config.to_dict(),
                "counters": {"update": update, "train_s": train_s},
                "modules": learner.state_dict(),
                "rng": capture_rng_state(),
                "extra": {"generator": gen.get_state()},
            },
        )
        buffer.storage.flush()

    def evaluate(update: int, loss: float) -> dict[str, float]:
        metrics, x = evaluate_learner(
            learner, config.eval.num_samples, _EVAL_SEED + seed, w2=config.eval.w2
        )
        row = {
            "update": update,
            "train_s": train_s,
            "loss": loss,
            "log_z": learner.log_z(),
            "explore_std": exploration_std(update, train),
            **metrics,
        }
        curve.append(row)
        torch.save(x, layout.root / "samples.pt")  # the latest on-policy samples (figure panels)
        return row, x

    if start == 0:
        row, x = evaluate(0, math.nan)
    n_old = round(train.replay_ratio * train.batch_size)
    n_fresh = train.batch_size - n_old
    bar = tqdm(
        total=updates,
        initial=start,
        desc=f"{config.name} seed {seed}",
        disable=not config.progress or updates == 0,
        position=position,
        leave=True,
        dynamic_ncols=True,
    )
    for update in range(start, updates):
        tick = time.perf_counter()
        e = exploration_std(update, train)
        fresh = learner.actor.sample_trajectories(
            n_fresh, extra_std=e, reference=learner.prior.drift_net, generator=gen
        )
        index = buffer.extend(pack_trajectories(fresh).cpu())
        rows = buffer.storage.get(index)
        if n_old > 0:
            rows = torch.cat([rows, buffer.sample(n_old)], dim=0)
        batch = unpack_trajectories(rows.to(device))
        out = learner.loss(batch)
        loss = out.get("loss_objective")
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip is not None:
            params = [p for g in learner.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
        learner.optimizer.step()
        train_s += time.perf_counter() - tick
        loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        done = update + 1
        bar.update(1)
        if done % train.eval_every == 0 or done == updates:
            row, x = evaluate(done, loss_sum / max(loss_n, 1))
            loss_sum, loss_n = 0.0, 0
            bar.set_postfix(
                loss=f"{row['loss']:.3g}",
                log_z=f"{row['log_z']:.3f}",
                tv=f"{row['tv']:.3f}",
                wrong=f"{row['wrong_mode_mass']:.4f}",
                elbo=f"{row['elbo']:.2f}",
                refresh=False,
            )
        if done % train.checkpoint_every == 0 or done == updates:
            save(done)
    bar.close()
    if updates == 0 or start == updates:  # guidance, or a finished run without a summary
        row, x = evaluate(updates, math.nan)
    if buffer is not None:
        buffer.storage.close()
    summary = {
        "method": config.name,
        "seed": seed,
        "updates": updates,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_s": train_s,
        "updates_per_s": updates / train_s if train_s > 0 else math.nan,
        **{k: v for k, v in row.items() if k not in ("update", "train_s", "explore_std")},
    }
    layout.summary.write_text(json.dumps(summary, indent=2))
    return summary
