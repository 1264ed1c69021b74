"""Tasks chosen by ``env.task``: every loss trains on the exactly solvable sequence MDP from the
one Trainer and reaches the exact optimum; what a task cannot provide is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from zarrl.algorithms import RTBLoss
from zarrl.engine.config import ConfigError, EnvConfig, ModelConfig, load_config
from zarrl.engine.tasks import TASKS, SequenceTask, build_task, optimum_of
from zarrl.engine.trainer import Trainer
from zarrl.envs import terminal_log_prob

TV_TOL = 0.02
# About 160 updates after the 2000 warm-up frames. Every loss is below TV_TOL by about 3500
# frames (75 updates) and ends these runs at TV 0.001-0.008 (seed 0; 8000 frames ran 300 updates
# to 1e-7..4e-3, far past the bound)
FRAMES = 5000


def _sequence_task(**options) -> SequenceTask:
    return build_task(EnvConfig(task="sequence", name="tree", options=options), ModelConfig())


def test_the_rtb_optimum_is_prior_times_reward_to_the_beta_by_enumeration():
    task = _sequence_task()
    beta = 2.0
    loss = RTBLoss(task.build_actor(), task.build_prior(), beta=beta)
    exact = optimum_of(loss, "prior", task.tree, task.reward, task.prior_log)
    terminal = task.tree.terminal
    prior_terminal = terminal_log_prob(task.tree, task.prior_log)[terminal]
    # an independent statement of the target: p(x)·exp(β·R(x)), normalized over finished x
    log_target = prior_terminal + beta * task.reward[terminal]
    want = (log_target - log_target.logsumexp(0)).exp()
    torch.testing.assert_close(exact.terminal_prob[terminal], want, rtol=1e-10, atol=1e-12)
    # the untrained (uniform) table is far from it; the prior's own table is not the target
    assert task.metrics(task.build_actor(), loss, reference="prior")["tv_to_optimum"] > 0.05
    prior_tv = task.metrics(task.build_prior(), loss, reference="prior")["tv_to_optimum"]
    assert prior_tv > 0.05


@pytest.mark.parametrize("name", ["rtb", "trust_pcl", "pcl", "kl_reinforce"])
def test_every_loss_reaches_the_exact_optimum_of_the_sequence_mdp(tmp_path, name):
    config = load_config(
        f"sequence_{name}",
        [f"run.dir={tmp_path}", f"train.total_frames={FRAMES}", "eval.every_frames=2500"],
    )
    trainer = Trainer(config)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary["updates"] > 100
    assert summary["tv_to_optimum"] <= TV_TOL, summary
    written = json.loads((tmp_path / f"sequence_{name}" / "summary.json").read_text())
    assert written["tv_to_optimum"] == pytest.approx(summary["tv_to_optimum"])


def test_zarrl_train_runs_a_sequence_config_from_the_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "zarrl.engine.cli", "train", "sequence_rtb", "--quiet"]
        + [f"run.dir={tmp_path}", f"train.total_frames={FRAMES}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "sequence_rtb" / "summary.json").read_text())
    assert summary["loss"] == "rtb" and summary["tv_to_optimum"] <= TV_TOL


def test_a_loss_that_needs_a_prior_is_refused_on_a_task_without_one(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"needs a prior network .*'gym' task .*CartPole-v1"):
        Trainer(tiny(tmp_path, "loss.name=rtb", "loss.beta=1.0", "loss.kl_coef=null"))
    assert not (tmp_path / "runs" / "tiny").exists()  # a refused start writes nothing
    with pytest.raises(ConfigError, match="loss.reference: 'prior' needs the task's prior"):
        Trainer(tiny(tmp_path, "loss.reference=prior"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env.task=sequense"], r"env.task: got 'sequense' \(did you mean sequence\?\)"),
        (["env.task=sequence", "env.options.vocab=3"], r"did you mean env.options.vocab_size"),
        (["env.task=sequence", "env.options.max_length=abc"], r"max_length: got 'abc'"),
        (["env.options.vocab_size=3"], r"expected none for the 'gym' task"),
        (["loss.reference=ema"], r"loss.reference: got 'ema', expected one of"),
    ],
)
def test_task_settings_are_checked_by_name(tiny, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny(tmp_path, *overrides))


def test_rtb_on_slices_shorter_than_an_episode_is_refused(tmp_path):
    config = load_config("sequence_rtb", [f"run.dir={tmp_path}", "train.slice_len=2"])
    with pytest.raises(ConfigError, match=r"train.slice_len: got 2, expected >= the longest"):
        Trainer(config)
    with pytest.raises(ConfigError, match="takes no reference network"):
        Trainer(load_config("sequence_rtb", [f"run.dir={tmp_path}", "loss.reference=prior"]))


def test_the_registry_names_both_tasks():
    assert {"gym", "sequence"} <= set(TASKS)
