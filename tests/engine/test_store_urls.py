"""The engine's buffer paths take store URLs (``engine/registry.py``): ``zarrl collect --buffer
memory://...`` writes into that store, never into a local folder named after the scheme."""

from __future__ import annotations

import pytest
from zarrl.buffers import ZarrStorage

pytest.importorskip("obstore", reason="obstore is not installed: pip install 'zarrl[scale]'")


def test_zarrl_collect_writes_a_store_url_not_a_local_folder(tmp_path, monkeypatch):
    from zarrl.engine.cli import main

    monkeypatch.chdir(tmp_path)
    url = f"memory://{tmp_path.name}/cp.zarr"
    argv = ["collect", "--env", "CartPole-v1", "--frames", "300", "--buffer", url, "--quiet"]
    assert main(argv) == 0
    assert list(tmp_path.iterdir()) == []  # before: a folder 'memory:' here
    with ZarrStorage.open(url, "r") as storage:
        assert len(storage) == 300


def _option_args(options: dict) -> list[str]:
    return [arg for key, value in options.items() for arg in ("--storage-option", f"{key}={value}")]


def test_local_zarrl_collect_takes_storage_options_for_an_s3_url(s3, tmp_path, monkeypatch):
    """``--storage-option`` with the local backend (before: refused unless --backend ray)."""
    from zarrl.engine.cli import main

    monkeypatch.chdir(tmp_path)
    bucket, options = s3
    url = f"{bucket}/runs/cp.zarr"
    argv = ["collect", "--env", "CartPole-v1", "--frames", "250", "--buffer", url, "--quiet"]
    assert main([*argv, *_option_args(options)]) == 0
    assert main([*argv, "--append", *_option_args(options)]) == 0
    assert list(tmp_path.iterdir()) == []
    with ZarrStorage.open(url, "r", storage_options=options) as storage:
        assert len(storage) == 500


def test_zarrl_train_online_into_an_s3_url_with_storage_options(s3, tmp_path):
    """``zarrl train --buffer s3://... --storage-option ...`` (buffer.storage_options): the run's
    buffer is the object store's; it reopens with every row the run counted."""
    from pathlib import Path

    import torch
    from zarrl.engine.cli import main

    bucket, options = s3
    url = f"{bucket}/train/buffer.zarr"
    config = Path(__file__).resolve().parents[2] / "configs" / "cartpole_trust_pcl.yaml"
    argv = [
        "train",
        str(config),
        f"run.dir={tmp_path}",
        "run.name=s3run",
        "run.device=cpu",
        "train.total_frames=400",
        "train.warmup_frames=200",
        "collector.frames_per_batch=100",
        "collector.init_random_frames=0",
        "eval.episodes=0",
        "--buffer",
        url,
        "--quiet",
        *_option_args(options),
    ]
    assert main(argv) == 0
    state = torch.load(tmp_path / "s3run" / "checkpoints" / "final.pt", weights_only=False)
    assert state["counters"]["updates"] > 0
    assert not (tmp_path / "s3run" / "buffer.zarr").exists()
    with ZarrStorage.open(url, "r", storage_options=options) as storage:
        assert len(storage) == state["counters"]["frames"] >= 400


def test_zarrl_import_generations_and_train_on_an_s3_buffer(s3, tmp_path, monkeypatch):
    """``zarrl import generations --buffer s3://... --storage-option ...`` then ``zarrl train``
    offline on that buffer (a few updates of the MLE loss); nothing written locally but the run."""
    import sys
    from pathlib import Path

    from zarrl.buffers.generations import GenerationsBuffer
    from zarrl.engine.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "buffers"))
    from generations_support import EOS, MAX_NEW, VOCAB, make_records, write_jsonl

    bucket, options = s3
    url = f"{bucket}/gen.zarr"
    logs = write_jsonl(tmp_path / "logs.jsonl", make_records(40, seed=8))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    facts = ["--vocab-size", str(VOCAB), "--eos-id", str(EOS), "--max-new-tokens", str(MAX_NEW)]
    argv = ["import", "generations", str(logs), "--buffer", url, *facts, *_option_args(options)]
    assert main(argv) == 0
    assert list(work.iterdir()) == []
    with GenerationsBuffer.open(url, storage_options=options) as buf:
        assert buf.num_completions == 40
    run = ["train", "generations/mle", "--buffer", url, *_option_args(options), "--quiet"]
    run += [f"run.dir={tmp_path / 'runs'}", "run.name=s3", "train.total_updates=4"]
    run += ["train.batch_size=8", "train.log_every_updates=2", "env.options.d_model=16"]
    assert main(run) == 0
    assert (tmp_path / "runs" / "s3").is_dir() and list(work.iterdir()) == []
    # ``zarrl sample`` of the run reads its prompts back from the S3 buffer, with the run's
    # storage options (no AWS_* variables exist here)
    out = tmp_path / "samples.jsonl"
    assert main(["sample", str(tmp_path / "runs" / "s3"), "--n", "2", "--out", str(out)]) == 0
    with GenerationsBuffer.open(url, storage_options=options) as buf:
        prompts = buf.num_prompts
    assert prompts >= 1 and len(out.read_text().splitlines()) == 2 * prompts
