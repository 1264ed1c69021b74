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


def test_verify_of_a_collected_buffer_is_one_ok_line_and_a_foreign_store_fails(
    random_buffer, tmp_path, capsys
):
    assert main(["verify", str(random_buffer)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "OK (format version 3" in line and "300 rows" in line
    assert main(["inspect", "--check", str(random_buffer)]) == 0
    assert "return mean" in capsys.readouterr().out
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["owner"] = "someone else"
    assert main(["verify", str(foreign)]) == 1
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "not a zarrl replay store" in line


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
    procs = [  # started together: each spends seconds importing
        subprocess.Popen([*run, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in (
            ["train", str(tmp_path / "none.yaml")],
            ["inspect", str(tmp_path / "none.zarr")],
        )
    ]
    try:
        (_, bad_err), (_, missing_err) = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 2 and "does not exist" in bad_err
    assert procs[1].returncode == 1 and "does not exist" in missing_err


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


# ---------------------------------------------------------------- a new user's command line


def test_dotted_overrides_are_accepted_after_options(tmp_path, capsys):
    config = _write_config(tmp_path, {"run": {"dir": str(tmp_path / "runs")}})
    assert main(["train", config, "--quiet", "train.batch_size=big"]) == 2
    assert "train.batch_size: got 'big'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a stray non-override is still refused
        main(["train", config, "--quiet", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_version_names_zarrl_and_torch(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("zarrl ") and "torch " in out and "\n" not in out.strip()


def test_shipped_configs_resolve_by_name_outside_the_checkout(tmp_path, monkeypatch):
    from zarrl.engine.config import load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("cartpole_trust_pcl").run.name == "cartpole_trust_pcl"
    assert load_config("configs/demo.yaml").run.name == "demo"
    from zarrl.engine.experiments.gmm_posterior.config import load_method_config

    assert load_method_config("trust_pcl").loss["name"] == "trust_pcl"
    assert load_config("gmm/rtb").env.task == "gmm_posterior"


def test_missing_optional_dependency_names_the_extra_and_writes_nothing(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    config = _write_config(tmp_path, {"run": {"dir": str(tmp_path / "runs")}})
    assert main(["train", config, "--quiet", "log.backend=tensorboard"]) == 1
    assert "pip install 'zarrl[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_failed_start_removes_what_it_created(tmp_path, tiny, monkeypatch):
    from zarrl.engine import trainer as trainer_module

    def broken_logger(self):
        raise RuntimeError("logger failed")

    monkeypatch.setattr(trainer_module.Trainer, "_build_logger", broken_logger)
    with pytest.raises(RuntimeError, match="logger failed"):
        trainer_module.Trainer(tiny(tmp_path))
    assert not (tmp_path / "runs" / "tiny").exists()  # no buffer.zarr, no config.yaml to block


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["train.total_frames=500"], "the run would make no update"),
        (["train.slice_len=8"], "expected >= loss.rollout (16)"),
        (["loss.gamma=abc"], "loss.gamma: got 'abc'"),
        (["loss.gama=0.9"], "did you mean loss.gamma?"),
        (["loss.name=trust_pcll"], "did you mean trust_pcl?"),
    ],
)
def test_configs_that_cannot_learn_are_refused_before_anything_is_written(
    tmp_path, capsys, extra, needle
):
    runs = tmp_path / "runs"
    argv = ["train", "cartpole_trust_pcl", "--quiet", f"run.dir={runs}", *extra]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not runs.exists()


def test_both_spellings_of_a_loss_name_are_accepted():
    from zarrl.engine.experiments.gmm_posterior.config import canonical_method
    from zarrl.engine.registry import loss_class

    assert loss_class("trust-pcl") is loss_class("trust_pcl")
    assert canonical_method("trust_pcl") == canonical_method("trust-pcl") == "trust-pcl"


def test_experiment_methods_get_a_did_you_mean(tmp_path, capsys):
    argv = ["experiment", "gmm-posterior", "--methods", "rtb,rbt", "--run-dir", str(tmp_path / "g")]
    assert main(argv) == 2
    assert "did you mean rtb?" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_collect_refusals_are_one_line_and_advise_append(
    random_buffer, trained_run, tmp_path, capsys
):
    base = ["collect", "--frames", "50", "--quiet"]
    new = str(tmp_path / "new.zarr")
    cases = [
        (["--env", "Pendulum-v1", "--policy", str(trained_run), "--buffer", new], 2, "CartPole"),
        (["--env", "CartPole-v1", "--max-size", "0", "--buffer", new], 2, "--max-size: got 0"),
        (["--env", "CartPole-v1", "--commit-every", "0", "--buffer", new], 2, "--commit-every"),
        (["--env", "CartPole-v1", "--buffer", str(random_buffer)], 1, "--append"),
    ]
    for argv, code, needle in cases:
        assert main(base + argv) == code, argv
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "new.zarr").exists()
    before = _files(random_buffer)
    argv = ["--env", "Acrobot-v1", "--append", "--buffer", str(random_buffer)]
    assert main(base + argv) == 1
    assert "holds observation float32[4]" in capsys.readouterr().err
    assert _files(random_buffer) == before


def test_collect_append_reports_rows_added_and_rows_held(random_buffer, capsys):
    from zarrl.engine.collect import COMMIT_EVERY_SECONDS

    assert COMMIT_EVERY_SECONDS <= 5  # a kill loses seconds of steps, not a whole chunk
    argv = ["collect", "--env", "CartPole-v1", "--frames", "50", "--quiet", "--append"]
    assert main([*argv, "--buffer", str(random_buffer), "--commit-every", "1"]) == 0
    out = capsys.readouterr().out
    assert "rows added" in out and "rows in buffer" in out and "350" in out
