"""Generations buffers behind store URLs (``buffers/generations/stores.py``): import, sample and
train on a moto S3 server (``s3`` fixture) and in ``memory://``, and the object-store import
lock: a concurrent importer refused, a stale lock taken over by exactly one importer, an import
whose lock was taken over commits nothing."""

from __future__ import annotations

import json
import time

import obstore
import pytest
import torch
from generations_support import EOS, MAX_NEW, VOCAB, make_records, write_jsonl
from zarrl.buffers.generations import (
    GenerationsBuffer,
    GenerationsImportError,
    import_generations,
    stores,
)
from zarrl.buffers.generations import importer as importer_module
from zarrl.buffers.object_store import open_store

FACTS = {"vocab_size": VOCAB, "eos_id": EOS, "max_new_tokens": MAX_NEW}


def _lock_store(url: str, options: dict | None):
    return open_store(url, options).store


def test_import_sample_and_train_on_s3(s3, tmp_path, monkeypatch):
    """Two imports into ``s3://`` hold the same completions, bit for bit, as the same imports
    into a local folder; the buffer's batches train a policy (its loss falls); nothing is
    written to the working directory (no local folder named after the scheme)."""
    from zarrl.envs.generations.transformer import CausalTransformerPolicy

    bucket, options = s3
    url = f"{bucket}/runs/gen"
    files = [
        write_jsonl(tmp_path / "a.jsonl", make_records(20, seed=1)),
        write_jsonl(tmp_path / "b.jsonl", make_records(15, seed=2, prompts=6)),
    ]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for f in files:
        assert import_generations([f], url, storage_options=options, **FACTS).completions
        import_generations([f], tmp_path / "local", **FACTS)
    assert list(work.iterdir()) == []
    assert not any(k["path"].endswith(stores.LOCK_KEY) for k in _list(url, options))
    with (
        GenerationsBuffer.open(url, storage_options=options) as remote,
        GenerationsBuffer.open(tmp_path / "local") as local,
    ):
        assert remote.num_completions == local.num_completions == 35
        assert remote.num_prompts == local.num_prompts and len(remote.imports) == 2
        every = torch.arange(35)
        want, got = local.completions(every), remote.completions(every)
        assert set(got.keys(True, True)) == set(want.keys(True, True))
        for key in want.keys(True, True):
            assert torch.equal(got[key], want[key]), key
        policy = CausalTransformerPolicy(VOCAB, d_model=16, num_heads=2)
        optim = torch.optim.Adam(policy.parameters(), lr=1e-2)
        batch = remote.sample(16, generator=torch.Generator().manual_seed(0))
        mask = batch["masks", "response"]
        losses = []
        for _ in range(5):  # behaviour cloning of the logged completions
            loss = -(policy.token_log_probs(batch) * mask).sum() / mask.sum()
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0]


def _list(url: str, options: dict | None) -> list[dict]:
    return [m for batch in obstore.list(_lock_store(url, options)) for m in batch]


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_memory_and_file_url_buffers_round_trip(tmp_path, scheme):
    url = "memory://gen-stores/buf" if scheme == "memory" else f"file://{tmp_path}/buf"
    f = write_jsonl(tmp_path / "a.jsonl", make_records(7, seed=3))
    import_generations([f], url, **FACTS)
    with GenerationsBuffer.open(url) as buf:
        assert buf.num_completions == 7 and buf.storage is not None
        assert int(buf.completion_length.sum()) == len(buf.storage)
    if scheme == "file":  # the same folder as the plain path
        with GenerationsBuffer.open(tmp_path / "buf") as buf:
            assert buf.num_completions == 7


def test_an_unknown_scheme_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "a.jsonl", make_records(4, seed=0))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="gs"):
        import_generations([src], "gs://bucket/gen", **FACTS)
    with pytest.raises(ValueError, match="gs"):
        GenerationsBuffer("gs://bucket/gen")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_a_concurrent_importer_is_refused_on_s3(s3, tmp_path):
    bucket, options = s3
    url = f"{bucket}/gen"
    src = write_jsonl(tmp_path / "a.jsonl", make_records(5, seed=4))
    with (
        stores.import_lock(url, options),  # as a running import holds it
        pytest.raises(GenerationsImportError, match="another import into this buffer"),
    ):
        import_generations([src], url, storage_options=options, **FACTS)
    assert import_generations([src], url, storage_options=options, **FACTS).completions == 5
    with GenerationsBuffer.open(url, storage_options=options) as buf:
        assert buf.num_completions == 5


def test_a_stale_lock_is_taken_over_by_exactly_one_importer(s3, tmp_path):
    """A killed importer's lock (lease ran out) does not block the buffer forever; of two
    importers taking it over, one wins and the other is refused."""
    bucket, options = s3
    url = f"{bucket}/gen"
    inner = _lock_store(url, options)
    stale = {"owner": "killed-host:1:abc", "expires": time.time() - 1}
    obstore.put(inner, stores.LOCK_KEY, json.dumps(stale).encode(), mode="create")
    first = stores.ObjectLock(inner, url)
    second = stores.ObjectLock(inner, url)
    seen = obstore.get(inner, stores.LOCK_KEY)
    first.acquire()  # takes it over (If-Match the stale version)
    with pytest.raises(GenerationsImportError, match="another import"):
        second.acquire()
    # the take-over is conditional: a put If-Match the stale version now fails
    with pytest.raises(obstore.exceptions.PreconditionError):
        obstore.put(inner, stores.LOCK_KEY, b"{}", mode={"e_tag": seen.meta["e_tag"]})
    first.release()
    assert not any(m["path"] == stores.LOCK_KEY for m in _list(url, options))
    src = write_jsonl(tmp_path / "a.jsonl", make_records(3, seed=5))
    assert import_generations([src], url, storage_options=options, **FACTS).completions == 3


def test_an_import_whose_lock_was_taken_over_commits_nothing(s3, tmp_path, monkeypatch):
    bucket, options = s3
    url = f"{bucket}/gen"
    import_generations(
        [write_jsonl(tmp_path / "a.jsonl", make_records(4, seed=6))],
        url,
        storage_options=options,
        **FACTS,
    )
    write_arrays = importer_module.write_arrays

    def stolen(group, arrays):  # another importer takes the lock over mid-import
        write_arrays(group, arrays)
        thief = {"owner": "other:2:def", "expires": time.time() + 60}
        obstore.put(_lock_store(url, options), stores.LOCK_KEY, json.dumps(thief).encode())

    monkeypatch.setattr(importer_module, "write_arrays", stolen)
    with pytest.raises(GenerationsImportError, match="lost its lock"):
        import_generations(
            [write_jsonl(tmp_path / "b.jsonl", make_records(6, seed=7))],
            url,
            storage_options=options,
            **FACTS,
        )
    with GenerationsBuffer.open(url, storage_options=options) as buf:
        assert buf.num_completions == 4 and len(buf.imports) == 1
