"""The Trainer, the one training loop of zarrl: data source -> Zarr replay buffer -> batch ->
loss -> optimizer -> reference/target update, with evaluation, logging, checkpoints and exact
resume.

Read ``run()`` top to bottom: it is the whole training loop. ``train.mode`` picks the data source
(:mod:`zarrl.engine.sources`):

- ``online``: a TorchRL ``Collector`` (CPU) writes into a ``ZarrStorage`` replay buffer; after every
  collected batch the learner performs ``updates_per_frame * frames`` updates (fractions carry over)
  once the buffer holds ``warmup_frames`` rows, then syncs the collector's policy weights.
- ``offline``: no collector; the buffer at ``buffer.path`` is opened read-only and the learner
  performs ``train.total_updates`` updates (evaluation in an environment is optional).
- ``mixed``: like online, but starting from the existing buffer at ``buffer.path`` (its rows are
  sampled from the first update on and new rows are appended to it).
- ``sampler``: every update the task's sampler function draws ``train.batch_size`` whole
  trajectories, which are written to the run's buffer and read back as the batch (plus
  ``train.replay_ratio`` of older ones); ``train.total_updates`` updates.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.collectors import Collector
from torchrl.record.loggers import CSVLogger, Logger
from tqdm.auto import tqdm
from zarrl.algorithms import TrustPCLLoss
from zarrl.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from zarrl.engine.config import Config, ConfigError, apply_overrides, save_config
from zarrl.engine.evaluate import evaluate_policy
from zarrl.engine.layout import RunLayout
from zarrl.engine.optim import parameter_groups
from zarrl.engine.policies import TRAJ_KEY, next_trajectory_id, uniform_policy_like
from zarrl.engine.registry import (
    MissingDependencyError,
    build_loss,
    create_storage,
    open_storage,
)
from zarrl.engine.reporting import format_table, plot_learning_curve
from zarrl.engine.sources import build_source
from zarrl.engine.tasks import StoredDataTask, build_task

__all__ = ["RunFolderError", "Trainer", "resolve_device"]


RECENT_EPISODES = 100
EVAL_PARALLEL_ENVS = 20


class RunFolderError(RuntimeError):
    """The run folder cannot be used (would overwrite a run, or holds no run to resume)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: got {name!r}, but CUDA is not available here")
    return device


class Trainer:
    """Train a policy from a config; ``Trainer(config).run()`` returns the summary figures.

    Args:
        config: the validated experiment config.
        resume: a run folder to continue from its last checkpoint (see :meth:`Trainer.resume`,
            which also restores the run's saved config).
    """

    def __init__(self, config: Config, *, resume: str | Path | None = None) -> None:
        checkpoint = None
        if resume is not None:
            checkpoint = load_checkpoint(latest_checkpoint(resume))
            self.layout = RunLayout(Path(resume))
        else:
            self.layout = RunLayout(config.run_dir)
            if self.layout.has_checkpoint():
                raise RunFolderError(
                    f"run folder {str(self.layout.root)!r} already holds a run; resume it with "
                    "--resume or choose another run.name"
                )
        self.config = config
        _check_optional_dependencies(config)
        self.buffer_path = _buffer_location(config, self.layout)
        # a refused start writes nothing: what this constructor creates is removed on failure
        fresh = checkpoint is None
        # (the folders above the run folder and a local buffer too: deepest first)
        paths = [self.layout.config, self.layout.logs, self.layout.root, *self.layout.root.parents]
        if isinstance(self.buffer_path, Path):
            paths = [self.buffer_path, *paths, *self.buffer_path.parents]
        created = [p for p in paths if fresh and not p.exists()]
        try:
            self._setup(config, checkpoint)
        except BaseException:
            self._discard(created)
            raise

    def _setup(self, config: Config, checkpoint: dict[str, Any] | None) -> None:
        """Builds environments, learner, buffer, logger and collector (see ``__init__``)."""
        self.storage = self.collector = self.source = None
        self.device = resolve_device(config.run.device)
        if config.run.num_threads:
            torch.set_num_threads(config.run.num_threads)
        torch.manual_seed(config.run.seed)
        self.counters = {
            "frames": 0,
            "updates": 0,
            "episodes": 0,
            "batches": 0,
            "traj_id_offset": 0,
            "wall_time": 0.0,
            "update_credit": 0.0,
            "collect_seconds": 0.0,  # time inside the collector (acting, env steps, buffer writes)
            "learn_seconds": 0.0,  # time inside learner updates (sampling, loss, optimizer)
        }
        self.eval_history: list[tuple[int, int, float]] = []  # (frames, updates, mean return)
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.recent_lengths: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.frames_to_target: int | None = None
        self._new_episode_returns: list[float] = []  # finished since the last collected batch
        self._new_episode_lengths: list[float] = []
        self.updates_to_target: int | None = None
        self.online = config.train.mode in ("online", "mixed")
        self._evaluated_at: tuple[int, int] | None = None  # (frames, updates) of the last one
        self._window: dict[str, list[float]] = {}  # sums and counts of update stats since a log

        self.task = build_task(config.env, config.model, seed=config.run.seed)
        if checkpoint is not None:
            extra = checkpoint["extra"]
            self.task.load_state_dict(extra.get("task", {"obs_norm": extra.get("obs_norm")}))
        self.task_metrics: dict[str, float] = {}
        if isinstance(self.task, StoredDataTask):  # its own dataset sizes its networks
            if config.train.mode != "offline":
                raise ConfigError(
                    f"train.mode: got {config.train.mode!r}, but the {config.env.task!r} task "
                    "learns offline from a stored buffer (train.mode=offline, --buffer PATH)"
                )
            options = dict(config.buffer.storage_options) or None
            self.storage = self.task.attach_buffer(self.buffer_path, options)
        self._build_environments()
        self._build_learner()
        self._build_buffer(resuming=checkpoint is not None)
        self.source = build_source(config.train.mode, self)
        self.buffer = self.source.buffer
        self._rows_seen = self._rows_written()
        if checkpoint is not None:
            self._load_state(checkpoint)
        if self.online:
            self.counters["traj_id_offset"] = next_trajectory_id(self.storage)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        save_config(config, self.layout.config)
        self.logger = self._build_logger()
        if self.source.collects:
            self.collector = self._build_collector()
            self.source.attach(self.collector)

    def _discard(self, created: list[Path]) -> None:
        """Close what a failed start opened and remove the paths it created."""
        source = getattr(self, "source", None)
        if source is not None:
            source.close()
        elif getattr(self, "collector", None) is not None:
            self.collector.shutdown()
        close = getattr(getattr(self, "storage", None), "close", None)
        if close is not None:
            close()
        for path in created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: list[str] | None = None) -> Trainer:
        """Continue the run in ``run_dir`` from its last checkpoint, with the checkpoint's config
        (plus ``overrides``, e.g. ``train.total_frames=200000`` to extend it)."""
        checkpoint = load_checkpoint(latest_checkpoint(run_dir))
        data = apply_overrides(checkpoint["config"], overrides or [])
        return cls(Config.from_dict(data), resume=run_dir)

    # ------------------------------------------------------------------ construction
    def _build_environments(self) -> None:
        cfg = self.config
        self.env = self.task.make_env(seed=cfg.run.seed)
        self.eval_env = None
        if cfg.eval.episodes > 0:
            # evaluation episodes play side by side in one vectorized env
            self.eval_env = self.task.make_env(
                seed=cfg.run.seed + 10_000, num_envs=min(cfg.eval.episodes, EVAL_PARALLEL_ENVS)
            )

    def _build_learner(self) -> None:
        cfg = self.config
        task = self.task
        self.actor = task.build_actor().to(self.device)
        networks = {
            "actor": lambda: self.actor,
            "value": lambda: task.build_value().to(self.device),
            "prior": (lambda: task.build_prior().to(self.device))
            if "prior" in task.provides
            else None,
        }
        loss, self.reference = build_loss(
            cfg.loss, networks, task=f"the {cfg.env.task!r} task ({task.description})"
        )
        self.loss = loss.to(self.device)
        # lagged reference policy / target values: theta~ <- kappa theta~ + (1 - kappa) theta
        make_updater = getattr(self.loss, "make_target_updater", None)
        self.target_updater = (
            make_updater() if make_updater is not None and _has_targets(self.loss) else None
        )
        lrs = {
            "policy": cfg.optim.lr_policy,
            "value": cfg.optim.lr_value,
            "log_z": cfg.optim.lr_log_z,
        }
        self.optimizer = torch.optim.Adam(
            parameter_groups(self.loss, lrs), eps=cfg.optim.adam_eps, fused=cfg.optim.fused or None
        )
        # the collector acts with its own CPU copy of the policy, synced after every update
        # round; built at first use (``collector_policy``): offline runs may never act
        self._collector_policy: nn.Module | None = None

    def _build_buffer(self, resuming: bool) -> None:
        cfg = self.config
        path = self.buffer_path = _buffer_location(cfg, self.layout)
        if self.storage is not None:  # the task's own dataset (StoredDataTask)
            return
        if cfg.train.mode == "offline":
            self.storage = open_storage(path, mode="r", config=cfg.buffer)
        elif self.online and cfg.collector.backend == "ray":  # the store in a Ray actor
            self.storage = _ray_hosted_storage(path, cfg, create=not resuming)
        elif resuming or cfg.train.mode == "mixed":
            self.storage = open_storage(path, mode="r+", config=cfg.buffer)
            rows = len(self.storage)
            if not resuming and rows + cfg.train.total_frames <= cfg.train.warmup_frames:
                raise ConfigError(
                    f"train.total_frames: got {cfg.train.total_frames}, expected more than "
                    f"train.warmup_frames ({cfg.train.warmup_frames}) minus the {rows} rows of "
                    f"{str(path)!r}: the run would make no update"
                )
        else:
            # the sampler writes one update's trajectories at a time: by default one chunk each
            sampled = cfg.train.batch_size if cfg.train.mode == "sampler" else None
            self.storage = create_storage(path, config=cfg.buffer, chunk_rows=sampled)

    def _build_logger(self) -> Logger:
        cfg = self.config
        if cfg.log.backend == "tensorboard":
            from torchrl.record.loggers import TensorboardLogger

            return TensorboardLogger(exp_name=cfg.run.name, log_dir=str(self.layout.logs))
        return CSVLogger(exp_name=cfg.run.name, log_dir=str(self.layout.logs))

    def _build_collector(self) -> Collector:
        cfg = self.config
        self._random_policy = uniform_policy_like(self.collector_policy)
        self._acting = _SwitchPolicy(self.collector_policy, self._random_policy)
        task = self.task
        seed = cfg.run.seed + 1_000 * (self.counters["batches"] + 1)

        def make() -> Any:
            return task.make_env(seed=seed)

        if cfg.collector.backend == "ray":  # workers on Ray write into the Ray-hosted buffer
            from zarrl.engine.ray_collect import RayBatchCollector

            return RayBatchCollector(
                lambda rank: task.make_env(seed=seed + rank),
                self._acting,
                self.buffer,
                num_workers=cfg.collector.num_workers,
                frames_per_batch=cfg.collector.frames_per_batch,
                episodes=self.storage.take_episodes,
                post_collect_hook=self._record_episodes,
                traj_offset=self.counters["traj_id_offset"],
            )
        return Collector(
            make,
            self._acting,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=-1,
            replay_buffer=self.buffer,
            postproc=self._postprocess_batch,
            post_collect_hook=self._record_episodes,
            auto_register_policy_transforms=False,
            storing_device="cpu",
            env_device="cpu",
            policy_device="cpu",
        )

    # ------------------------------------------------------------------ collection hooks
    def _postprocess_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Flatten ``[E, T]`` batches env-major (each env's steps stay contiguous) and make the
        trajectory ids unique across resumes."""
        batch = batch.reshape(-1)
        if TRAJ_KEY in batch.keys(include_nested=True):
            batch[TRAJ_KEY] = batch[TRAJ_KEY] + self.counters["traj_id_offset"]
        return batch

    def _record_episodes(self, batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        if not done.any():
            return
        returns = batch["next", "episode_reward"].reshape(-1)[done]
        lengths = batch["next", "step_count"].reshape(-1)[done]
        self.recent_returns.extend(returns.tolist())
        self.recent_lengths.extend(lengths.to(torch.float64).tolist())
        self.counters["episodes"] += int(done.sum())
        self._new_episode_returns.extend(returns.tolist())
        self._new_episode_lengths.extend(lengths.to(torch.float64).tolist())

    # ------------------------------------------------------------------ learner
    @property
    def collector_policy(self) -> nn.Module:
        """The CPU acting policy (collector, evaluation episodes), a second copy of the
        learner's, built and synced at first use."""
        if self._collector_policy is None:
            self._collector_policy = self.task.build_actor()
            self._sync_collector_policy(initial=True)
        return self._collector_policy

    def _sync_collector_policy(self, initial: bool = False) -> None:
        """Copy the learner's policy weights into the CPU acting policy (when built), then let
        the collector propagate them to its internal copy (TorchRL ``update_policy_weights_``)."""
        if self._collector_policy is None:
            return
        learner = TensorDict.from_module(self.actor).data
        TensorDict.from_module(self.collector_policy).data.update_(learner.to("cpu"))
        if not initial and getattr(self, "collector", None) is not None:
            self.collector.update_policy_weights_()

    def _sample(self) -> TensorDictBase:
        batch = self.source.next_batch()
        if self.device.type == "cuda":  # page-locked host memory, asynchronous copy
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def update(self) -> dict[str, float]:
        """One learner step: sample, loss, backward, clip, Adam, reference/target update."""
        batch = self._sample()
        out = self.loss(batch)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float("nan")
        if self.config.optim.grad_clip is not None:
            grad_norm = float(
                nn.utils.clip_grad_norm_(self.loss.parameters(), self.config.optim.grad_clip)
            )
        self.optimizer.step()
        if self.target_updater is not None:
            self.target_updater.step()
        self.counters["updates"] += 1
        rows = self._rows_written()
        if not self.online:  # rows a sampler wrote in this update (a collector's are counted apart)
            self.counters["frames"] += rows - self._rows_seen
        self._rows_seen = rows
        stats = {
            k: float(v.detach().float())
            for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1
        }
        stats["loss"] = float(loss.detach())
        stats["grad_norm"] = grad_norm
        for key, value in stats.items():  # logged as means over the updates since the last log
            total = self._window.setdefault(key, [0.0, 0])
            if math.isfinite(value):
                total[0] += value
                total[1] += 1
        return stats

    def _update_lambda(self, returns: list[float], lengths: list[float]) -> None:
        """Feed the episodes finished since the last call to the loss's KL-budget λ tuner."""
        tuned = isinstance(self.loss, TrustPCLLoss) and self.loss.lambda_tuner is not None
        if not (tuned and returns):
            return
        self.loss.update_lambda(
            torch.tensor(returns, dtype=torch.float64), torch.tensor(lengths, dtype=torch.float64)
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: int | None = None) -> torch.Tensor:
        """Returns ``[episodes]`` returns of the current policy in the evaluation environment."""
        if self.eval_env is None:
            raise ConfigError("env.name: got None, expected an environment to evaluate in")
        self.collector_policy.eval()
        self._sync_collector_policy(initial=True)
        return evaluate_policy(
            self.eval_env,
            self.collector_policy,
            episodes or self.config.eval.episodes,
            deterministic=self.config.eval.deterministic,
            max_steps=self.task.max_episode_steps,
        )

    def _maybe_evaluate(self, force: bool = False) -> float | None:
        """Evaluate when due (or ``force``): the task's metrics always, returns of evaluation
        episodes where ``eval.episodes`` > 0; returns their mean (``None`` without episodes)."""
        cfg = self.config.eval
        if self.online:
            due = self.counters["frames"] - self._last_eval_frames >= cfg.every_frames
        else:
            due = self.counters["updates"] - self._last_eval_updates >= cfg.every_updates
        if not (due or force):
            return None
        self._last_eval_frames = self.counters["frames"]
        self._last_eval_updates = self.counters["updates"]
        self._evaluated_at = (self.counters["frames"], self.counters["updates"])
        step = self.counters["frames"] if self.online else self.counters["updates"]
        mean = None
        if self.eval_env is not None:
            returns = self.evaluate()
            mean = float(returns.mean())
            self.logger.log_scalar("eval/return_mean", mean, step=step)
            if returns.numel() > 1:
                self.logger.log_scalar("eval/return_std", float(returns.std()), step=step)
            self.eval_history.append((self.counters["frames"], self.counters["updates"], mean))
        self.task_metrics = self.task.metrics(self.actor, self.loss, reference=self.reference)
        for key, value in self.task_metrics.items():
            self.logger.log_scalar(f"eval/{key}", value, step=step)
        if mean is None:
            return None
        target = cfg.target_return
        if target is not None and mean >= target and self.frames_to_target is None:
            self.frames_to_target = self.counters["frames"]
            self.updates_to_target = self.counters["updates"]
            self.time_to_target = self.counters["wall_time"] + time.monotonic() - self._t0
        return mean

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        counters = dict(self.counters)
        counters["wall_time"] = self.counters["wall_time"] + time.monotonic() - self._t0
        counters["buffer_writes"] = self._rows_written()
        return {
            "config": self.config.to_dict(),
            "counters": counters,
            "modules": {
                "loss": self.loss.state_dict(),
                "actor": {k: v.cpu() for k, v in self.actor.state_dict().items()},
            },
            "optimizers": {"adam": self.optimizer.state_dict()},
            "rng": capture_rng_state(),
            "extra": {
                "eval_history": [list(e) for e in self.eval_history],
                "recent_returns": list(self.recent_returns),
                "recent_lengths": list(self.recent_lengths),
                "frames_to_target": self.frames_to_target,
                "updates_to_target": self.updates_to_target,
                "time_to_target": getattr(self, "time_to_target", None),
                "buffer_rows": len(self.storage),
                "task": self.task.state_dict(),
                "source": self.source.state_dict(),
                "buffer_path": _stored_path(self.config.buffer.path or self.layout.default_buffer),
            },
        }

    def save(self, final: bool = False) -> Path:
        """Flush the buffer (durable first), then write the checkpoint atomically."""
        # the state first: rows a Ray worker writes meanwhile are committed, never missing
        state = self.state_dict()
        if self.config.train.mode != "offline":  # the only mode that opens the buffer read-only
            self.storage.flush()
        path = save_checkpoint(self.layout.last_checkpoint, state)
        if final:
            save_checkpoint(self.layout.final_checkpoint, state)
        return path

    def _load_state(self, checkpoint: dict[str, Any]) -> None:
        self.loss.load_state_dict(checkpoint["modules"]["loss"])
        self.optimizer.load_state_dict(checkpoint["optimizers"]["adam"])
        restore_rng_state(checkpoint["rng"])
        self.counters.update(checkpoint["counters"])
        extra = checkpoint["extra"]
        self.eval_history = [tuple(e) for e in extra["eval_history"]]
        self.recent_returns.extend(extra["recent_returns"])
        self.recent_lengths.extend(extra["recent_lengths"])
        self.frames_to_target = extra["frames_to_target"]
        self.updates_to_target = extra.get("updates_to_target")
        if extra["time_to_target"] is not None:
            self.time_to_target = extra["time_to_target"]
        self.source.load_state_dict(extra.get("source", {}))
        if self.online:
            # rows committed after the checkpoint (before a crash) are kept: count them as
            # collected so that the buffer length and the frame counter stay consistent.
            extra_rows = self._rows_written() - _rows_written_at(checkpoint)
            if extra_rows < 0:
                raise CheckpointError(
                    f"buffer {str(self.buffer_path)!r} holds fewer rows than the checkpoint "
                    f"recorded ({self._rows_written()} < {_rows_written_at(checkpoint)})"
                )
            self.counters["frames"] += extra_rows
            self.counters["buffer_writes"] = self._rows_written()
        self._sync_collector_policy(initial=True)

    def _rows_written(self) -> int:
        """Rows ever written to the buffer (its writer's count; the storage restores it on open)."""
        return int(self.buffer.write_count)

    # ------------------------------------------------------------------ main loop
    def _done(self) -> bool:
        cfg = self.config.train
        if cfg.total_updates is not None and self.counters["updates"] >= cfg.total_updates:
            return True
        if cfg.stop_at_target and self.frames_to_target is not None:
            return True
        if self.online:
            return self.counters["frames"] >= cfg.total_frames
        return False

    def run(self) -> dict[str, Any]:
        """Train until the configured budget is spent; returns the summary figures."""
        cfg = self.config
        self._t0 = time.monotonic()
        self._rows_seen = self._rows_written()
        self._last_eval_frames = self.counters["frames"]
        self._last_eval_updates = self.counters["updates"]
        self._last_ckpt_updates = self.counters["updates"]
        last_log_updates = self.counters["updates"]
        stats: dict[str, float] = {}
        total = cfg.train.total_frames if self.online else (cfg.train.total_updates or 0)
        start = self.counters["frames"] if self.online else self.counters["updates"]
        bar = tqdm(
            total=total,
            initial=min(start, total),
            disable=not cfg.log.progress,
            unit="frames" if self.online else "updates",
            dynamic_ncols=True,
        )
        collect_time = learn_time = 0.0
        frames_in_window = updates_in_window = 0
        try:
            if cfg.eval.at_start and self.counters["updates"] == 0:
                self._maybe_evaluate(force=True)
            while not self._done():
                # 1. collect one batch into the replay buffer (online / mixed)
                if self.source.collects:
                    self._acting.random = self.counters["frames"] < cfg.collector.init_random_frames
                    t = time.perf_counter()
                    new = self.source.collect()
                    self._rows_seen = self._rows_written()
                    elapsed = time.perf_counter() - t
                    collect_time += elapsed
                    self.counters["collect_seconds"] += elapsed
                    self.counters["frames"] += new
                    self.counters["batches"] += 1
                    frames_in_window += new
                    bar.update(new)
                    if self._new_episode_returns:
                        mean_ret = sum(self._new_episode_returns) / len(self._new_episode_returns)
                        self.logger.log_scalar(
                            "train/episode_return", mean_ret, step=self.counters["frames"]
                        )
                        self._update_lambda(self._new_episode_returns, self._new_episode_lengths)
                        self._new_episode_returns.clear()
                        self._new_episode_lengths.clear()
                    if len(self.storage) >= cfg.train.warmup_frames:  # UTD counts after warm-up
                        self.counters["update_credit"] += new * cfg.train.updates_per_frame
                    n_updates = int(self.counters["update_credit"])
                    self.counters["update_credit"] -= n_updates
                else:
                    n_updates = min(
                        cfg.train.log_every_updates,
                        (cfg.train.total_updates or 0) - self.counters["updates"],
                    )
                # 2. learn (a sampler writes the rows of each update itself: no warm-up)
                warm = cfg.train.mode == "sampler" or len(self.storage) >= cfg.train.warmup_frames
                if warm and n_updates > 0:
                    t = time.perf_counter()
                    for _ in range(n_updates):
                        stats = self.update()
                    elapsed = time.perf_counter() - t
                    learn_time += elapsed
                    self.counters["learn_seconds"] += elapsed
                    updates_in_window += n_updates
                    if self.collector is not None:
                        self._sync_collector_policy()
                    if not self.online:
                        bar.update(n_updates)
                # 3. evaluate, log, checkpoint
                mean_eval = self._maybe_evaluate()
                if self.counters["updates"] - last_log_updates >= cfg.train.log_every_updates or (
                    not self.online
                ):
                    last_log_updates = self.counters["updates"]
                    self._log_stats(frames_in_window, collect_time, updates_in_window, learn_time)
                    frames_in_window = updates_in_window = 0
                    collect_time = learn_time = 0.0
                postfix = {"upd": self.counters["updates"]}
                if self.recent_returns:
                    postfix["ret100"] = f"{sum(self.recent_returns) / len(self.recent_returns):.1f}"
                if self.eval_history:
                    postfix["eval"] = f"{self.eval_history[-1][2]:.1f}"
                if "loss" in stats:
                    postfix["loss"] = f"{stats['loss']:.3g}"
                bar.set_postfix(postfix, refresh=False)
                if mean_eval is not None and cfg.log.progress:
                    bar.refresh()
                if (
                    self.counters["updates"] - self._last_ckpt_updates
                    >= cfg.train.checkpoint_every_updates
                ):
                    self._last_ckpt_updates = self.counters["updates"]
                    self.save()
            self._maybe_evaluate(force=self._eval_is_stale())
            self.save(final=True)
        finally:
            bar.close()
            self.source.close()
        return self._finish()

    def _eval_is_stale(self) -> bool:
        """Whether the policy changed since the last evaluation (or none was made)."""
        return self._evaluated_at != (self.counters["frames"], self.counters["updates"])

    def _log_stats(
        self,
        frames: int,
        collect_time: float,
        updates: int,
        learn_time: float,
    ) -> None:
        step = self.counters["frames"] if self.online else self.counters["updates"]
        for key, (total, count) in self._window.items():
            if count:
                self.logger.log_scalar(f"train/{key}", total / count, step=step)
        self._window.clear()
        if collect_time > 0:
            self.logger.log_scalar("perf/frames_per_s", frames / collect_time, step=step)
        if learn_time > 0:
            self.logger.log_scalar("perf/updates_per_s", updates / learn_time, step=step)
        self.logger.log_scalar("train/updates", self.counters["updates"], step=step)

    def summary(self) -> dict[str, Any]:
        last_eval = self.eval_history[-1][2] if self.eval_history else None
        best_eval = max((e[2] for e in self.eval_history), default=None)
        return {
            "run folder": str(self.layout.root),
            "mode": self.config.train.mode,
            "env": self.task.description,
            "loss": self.config.loss["name"],
            "env steps": self.counters["frames"],
            "updates": self.counters["updates"],
            "episodes": self.counters["episodes"],
            "wall time (s)": round(self.counters["wall_time"], 1),
            "frames/s (collecting)": _rate(
                self.counters["frames"], self.counters["collect_seconds"]
            ),
            "updates/s (learning)": _rate(self.counters["updates"], self.counters["learn_seconds"]),
            "learn time (s)": round(self.counters["learn_seconds"], 2),
            "final eval return": last_eval,
            "best eval return": best_eval,
            "steps to target": self.frames_to_target,
            "updates to target": self.updates_to_target,
            "time to target (s)": getattr(self, "time_to_target", None),
            "buffer rows": len(self.storage),
            **self.task_metrics,
        }

    def _finish(self) -> dict[str, Any]:
        self.counters["wall_time"] += time.monotonic() - self._t0
        self._t0 = time.monotonic()
        if self._eval_is_stale():  # else the last evaluation's are current
            self.task_metrics = self.task.metrics(self.actor, self.loss, reference=self.reference)
        summary = self.summary()
        self.layout.summary.write_text(json.dumps(summary, indent=2))
        if self.eval_history or self.config.train.mode != "sampler":  # a sampler plays no episode
            self._plot()
        if self.config.log.progress:
            print(format_table(summary, title="zarrl run summary"))
        return summary

    def _plot(self) -> None:
        """``learning_curve.png``: training and evaluation returns."""
        plot_learning_curve(
            self.layout.scalars(self.config.run.name),
            self.layout.plot,
            title=f"{self.config.loss['name']} on {self.task.description}",
            target=self.config.eval.target_return,
            xlabel="environment steps" if self.online else "learner updates",
            run_name=self.config.run.name,
        )

    def close(self) -> None:
        self.source.close()
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()


def _check_optional_dependencies(config: Config) -> None:
    """Refuse, before anything is written, a config that needs a package that is not installed."""
    if config.log.backend == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise MissingDependencyError(
            "log.backend: 'tensorboard' needs the tensorboard package, which is not installed: "
            "pip install 'zarrl[tensorboard]' (or use log.backend=csv)"
        )
    if config.model.kind == "hf" and importlib.util.find_spec("transformers") is None:
        raise MissingDependencyError(
            "model.kind: 'hf' needs the transformers package, which is not installed: "
            "pip install 'zarrl[llm]' (or use model.kind=default)"
        )


class _SwitchPolicy(TensorDictModuleBase):
    """Acts with ``random_policy`` while ``random`` is set (warm-up), else with ``policy``."""

    def __init__(self, policy: nn.Module, random_policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.random_policy = random_policy
        self.random = False
        self.in_keys = policy.in_keys
        self.out_keys = policy.out_keys

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        return self.random_policy(td) if self.random else self.policy(td)


def _buffer_location(config: Config, layout: RunLayout) -> Path | str:
    """``buffer.path`` (default: the run folder's ``buffer.zarr``): a local ``Path``, or a store
    URL kept as its string (``s3://bucket/run.zarr``)."""
    from zarrl.buffers.object_store import is_url

    if not config.buffer.path:
        return layout.default_buffer
    return config.buffer.path if is_url(config.buffer.path) else Path(config.buffer.path)


def _ray_hosted_storage(path: Path | str, cfg: Config, *, create: bool) -> Any:
    """The run's store built inside a Ray actor (``engine/ray_buffer.py``): a new one at
    ``path`` (``create``; refuses an existing path) or the existing one reopened for writing."""
    from zarrl.engine.ray_buffer import RayHostedStorage
    from zarrl.engine.ray_collect import storage_factory
    from zarrl.engine.registry import BufferPathError

    create = create and cfg.train.mode != "mixed"
    if isinstance(path, str):  # a store URL: ZarrStorage refuses an existing / missing store
        pass
    elif create and path.exists():
        raise BufferPathError(
            f"buffer path {str(path)!r} already exists; refusing to overwrite it (train on it "
            "with --mixed, or choose another buffer.path)"
        )
    elif not create and not path.exists():
        raise BufferPathError(f"buffer path {str(path)!r} does not exist")
    return RayHostedStorage(storage_factory(str(path), cfg.buffer, create=create), str(path))


def _stored_path(path: str | Path) -> str:
    """``path`` as a checkpoint keeps it: absolute (so that it resolves from any working
    directory), a store URL (``s3://...``) as given."""
    from zarrl.buffers.object_store import is_url

    return str(path) if is_url(str(path)) else str(Path(path).absolute())


def _has_targets(loss: nn.Module) -> bool:
    return any("target_" in name for name, _ in loss.named_buffers()) or any(
        "target_" in name for name, _ in loss.named_parameters()
    )


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def _rows_written_at(checkpoint: dict[str, Any]) -> int:
    return int(checkpoint["counters"].get("buffer_writes", checkpoint["extra"]["buffer_rows"]))
