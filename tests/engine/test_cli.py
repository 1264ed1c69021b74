"""The ``zarrl`` command: every subcommand, its exit codes, and refusals that overwrite nothing.

Most cases call ``main(argv)`` in-process (a subprocess costs seconds of imports); a few run the
real command line to pin the process exit codes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
import zarr
from zarrl.buffers import ZarrStorage
from zarrl.engine.cli import main


def _files(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shared_buffer(tmp_path_factory):
    """300 random CartPole steps, collected once for the module (tests must not modify it)."""
    path = tmp_path_factory.mktemp("buffers") / "cp.zarr"
    argv = ["collect", "--env", "CartPole-v1", "--frames", "300", "--buffer", str(path), "--quiet"]
    assert main(argv) == 0
    return path


@pytest.fixture
def random_buffer(shared_buffer, tmp_path):
    """A private copy of the shared buffer."""
    path = tmp_path / "cp.zarr"
    shutil.copytree(shared_buffer, path)
    return path


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, tiny):
    from zarrl.engine.trainer import Trainer

    tmp = tmp_path_factory.mktemp("run")
    trainer = Trainer(tiny(tmp, "train.total_frames=300", "eval.episodes=0"))
    trainer.run()
    trainer.close()
    return trainer.layout.root


@pytest.fixture
def trained_run(shared_run, tmp_path):
    """A private copy of a finished 300-step run folder."""
    path = tmp_path / "run"
    shutil.copytree(shared_run, path)
    return path


def _write_config(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_collect_writes_a_new_buffer_and_refuses_to_overwrite_it(random_buffer, capsys):
    assert len(ZarrStorage.open(random_buffer, mode="r")) == 300
    before = _files(random_buffer)
    code = main(
        [
            "collect",
            "--env",
            "CartPole-v1",
            "--frames",
            "100",
            "--buffer",
            str(random_buffer),
            "--quiet",
        ]
    )
    assert code == 1
    assert "already exists" in capsys.readouterr().err
    assert _files(random_buffer) == before


def test_collect_appends_with_a_trained_policy(random_buffer, trained_run):
    code = main(
        [
            "collect",
            "--env",
            "CartPole-v1",
            "--frames",
            "200",
            "--buffer",
            str(random_buffer),
            "--append",
            "--policy",
            str(trained_run),
            "--quiet",
        ]
    )
    assert code == 0
    storage = ZarrStorage.open(random_buffer, mode="r")
    assert len(storage) == 500
    ids = storage[:500]["collector", "traj_ids"]
    assert not set(ids[:300].tolist()) & set(ids[300:].tolist())


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--frames", "0"], "--frames: got 0"),
        (["--frames", "10", "--policy", "nowhere/"], "--policy: got 'nowhere/'"),
        (["--frames", "10", "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    ],
)
def test_collect_rejects_bad_arguments_with_usage_errors(tmp_path, capsys, argv, needle):
    base = ["collect", "--env", "CartPole-v1", "--buffer", str(tmp_path / "b.zarr"), "--quiet"]
    assert main(base + argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "b.zarr").exists()


def test_inspect_reports_rows_episodes_schema_and_returns(random_buffer, capsys):
    assert main(["inspect", str(random_buffer)]) == 0
    out = capsys.readouterr().out
    assert "rows" in out and "300" in out
    assert "next.observation" in out and "float32" in out
    assert "return mean" in out and "compression" in out


def test_inspect_missing_and_foreign_paths_fail_cleanly(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.zarr")]) == 1
    assert "does not exist" in capsys.readouterr().err
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["owner"] = "someone else"
    before = _files(foreign)
    assert main(["inspect", str(foreign)]) == 1
    assert "not a zarrl" in capsys.readouterr().err
    assert _files(foreign) == before


def test_train_rejects_a_bad_config_naming_key_and_value(tmp_path, capsys):
    config = _write_config(
        tmp_path, {"run": {"dir": str(tmp_path / "runs")}, "train": {"batch_size": "big"}}
    )
    assert main(["train", config]) == 2
    assert "train.batch_size: got 'big'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["train", config, "train.batch_size=4", "optim.lr_policy=-1"]) == 2
    assert "optim.lr_policy: got -1" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_offline_with_missing_or_foreign_buffer_fails_and_writes_nothing(tmp_path, capsys):
    config = _write_config(
        tmp_path, {"run": {"dir": str(tmp_path / "runs")}, "train": {"total_updates": 5}}
    )
    assert main(["train", config, "--offline", "--buffer", str(tmp_path / "none.zarr")]) == 1
    assert "does not exist" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("not a store")
    assert main(["train", config, "--offline", "--buffer", str(foreign)]) == 1
    assert "cannot be opened" in capsys.readouterr().err
    assert (foreign / "data.txt").read_text() == "not a store"
    assert not (tmp_path / "runs").exists()


def test_train_online_never_overwrites_an_existing_buffer_path(tmp_path, random_buffer, capsys):
    config = _write_config(tmp_path, {"run": {"dir": str(tmp_path / "runs")}})
    before = _files(random_buffer)
    assert main(["train", config, f"buffer.path={random_buffer}", "--quiet"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert _files(random_buffer) == before


def test_train_offline_then_eval_the_run(tmp_path, random_buffer, capsys):
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            "--offline",
            "--buffer",
            str(random_buffer),
            "--quiet",
            _write_config(
                tmp_path,
                {
                    "run": {"dir": str(runs), "name": "off"},
                    "train": {
                        "total_updates": 4,
                        "batch_size": 4,
                        "slice_len": 4,
                        "warmup_frames": 10,
                    },
                    "loss": {"kl_coef": 0.1, "gamma": 0.99},
                    "eval": {"episodes": 0},
                },
            ),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "checkpoints:" in out and "plot:" in out
    assert main(["eval", str(runs / "off"), "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_eval_and_resume_refuse_folders_that_hold_no_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--episodes", "0"]) == 2


def test_train_resume_continues_a_finished_run_with_a_larger_budget(trained_run, capsys):
    assert main(["train", "--resume", str(trained_run), "train.total_frames=500", "--quiet"]) == 0
    assert len(ZarrStorage.open(trained_run / "buffer.zarr", mode="r")) == 500


def test_demo_runs_the_main_job_and_never_reuses_a_run_folder(tmp_path, capsys):
    small = [
        "train.total_frames=300",
        "collector.frames_per_batch=100",
        "collector.init_random_frames=100",
        "train.warmup_frames=100",
        "eval.episodes=1",
        "log.progress=false",
    ]
    assert main(["demo", "--runs", str(tmp_path), *small]) == 0
    out = capsys.readouterr().out
    for what in ("buffer:", "checkpoints:", "logs:", "plot:"):
        assert what in out
    assert (tmp_path / "demo" / "learning_curve.png").is_file()
    assert main(["demo", "--runs", str(tmp_path), *small]) == 0
    assert (tmp_path / "demo-2" / "checkpoints" / "final.pt").is_file()


def test_command_line_exit_codes_in_real_processes(tmp_path):
    run = [sys.executable, "-m", "zarrl.engine.cli"]
    bad = subprocess.run(
        [*run, "train", str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    missing = subprocess.run(
        [*run, "inspect", str(tmp_path / "none.zarr")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_building_the_command_line_loads_no_torch_and_the_package_exports_resolve():
    code = (
        "import sys; from zarrl.engine.cli import _parser; _parser(); "
        "print('torch' in sys.modules, 'zarrl.engine.trainer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # `zarrl --help` starts in a blink
    import zarrl.engine as engine

    for name in engine.__all__:
        assert getattr(engine, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        engine.nope  # noqa: B018
