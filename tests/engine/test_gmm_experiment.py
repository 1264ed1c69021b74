"""``zarrl experiment gmm-posterior`` end to end, from the command line and from Python."""

from __future__ import annotations

import csv

import pytest
from gmm_support import PRIOR, load_test_prior
from zarrl.engine.cli import main
from zarrl.engine.experiments.gmm_posterior.experiment import run_experiment


@pytest.fixture(scope="module")
def prior():
    return load_test_prior()


def test_experiment_command_runs_end_to_end_and_writes_table_and_figures(tmp_path, capsys):
    run_dir = tmp_path / "gmm"
    code = main(
        [
            "experiment",
            "gmm-posterior",
            f"env.options.prior={PRIOR}",
            "eval.every_updates=2",
            "train.log_every_updates=2",
            "env.options.eval_samples=64",
            "env.options.eval_w2=false",
            "buffer.max_size=32",
            "--methods",
            "rtb,guidance",
            "--seeds",
            "0,1",
            "--updates",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| rtb | 2 | 2 |" in out and "| guidance | 2 | 0 |" in out
    for name in ("results.md", "results.csv", "samples.png", "learning_curves.png"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / "configs" / "rtb.yaml").is_file()
    assert (run_dir / "rtb" / "seed1" / "logs" / "seed1" / "scalars" / "eval" / "tv.csv").is_file()
    with open(run_dir / "results.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["rtb"]["seeds"] == "2" and float(rows["rtb"]["tv_std"]) >= 0.0


def test_experiment_from_python_skips_finished_runs(tmp_path, prior):
    kwargs = dict(
        run_dir=tmp_path / "gmm",
        updates=2,
        batch_size=8,
        device="cpu",
        progress=False,
        report=False,
    )
    over = [
        f"env.options.prior={PRIOR}",
        "env.options.eval_samples=32",
        "env.options.eval_w2=false",
        "buffer.max_size=16",
    ]
    first = run_experiment(["rtb"], [0], over, **kwargs)
    second = run_experiment(["rtb"], [0], over, **kwargs)
    assert second["summaries"] == first["summaries"]


def test_command_rejects_unknown_method_with_usage_exit_code(tmp_path, capsys):
    code = main(["experiment", "gmm-posterior", "--methods", "rtb,ppo", "--run-dir", str(tmp_path)])
    assert code == 2
    assert "ppo" in capsys.readouterr().err
    assert not (tmp_path / "rtb").exists()
