"""Reading a generations buffer: padded batches exact against the records, prompt groups, and
TorchRL's ``SliceSampler`` drawing d-token windows from the token storage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torchrl.data import ReplayBuffer, SliceSampler
from zarrl.buffers.generations import GenerationsBuffer, import_generations

sys.path.insert(0, str(Path(__file__).parent))
from generations_support import EOS, MAX_NEW, VOCAB, expected, make_records, write_jsonl  # noqa: E402

FACTS = {"vocab_size": VOCAB, "eos_id": EOS, "max_new_tokens": MAX_NEW}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    records = make_records(60, seed=21, prompts=5)
    import_generations([write_jsonl(tmp / "a.jsonl", records)], tmp / "buf", **FACTS)
    with GenerationsBuffer.open(tmp / "buf") as buf:
        yield buf, records


def test_a_batch_is_padded_and_masked_exactly(logged):
    buf, records = logged
    idx = torch.tensor([7, 3, 3, 59, 0])
    batch = buf.completions(idx)
    lengths = [len(records[i]["completion_ids"]) for i in idx.tolist()]
    plens = [len(records[i]["prompt_ids"]) for i in idx.tolist()]
    L, Lp = max(lengths), max(plens)
    assert batch.batch_size == torch.Size([5])
    assert batch["tokens", "response"].shape == (5, L) and batch["tokens", "prompt"].shape == (
        5,
        Lp,
    )
    for b, i in enumerate(idx.tolist()):
        r, n, p = records[i], lengths[b], plens[b]
        assert batch["masks", "response"][b].tolist() == [True] * n + [False] * (L - n)
        assert batch["tokens", "response"][b].tolist() == r["completion_ids"] + [0] * (L - n)
        want = torch.tensor(r["logprobs"] + [0.0] * (L - n), dtype=torch.float32)
        assert torch.equal(batch["log_probs", "behaviour"][b], want)
        ref = torch.tensor(r["ref_logprobs"] + [0.0] * (L - n), dtype=torch.float32)
        assert torch.equal(batch["log_probs", "ref"][b], ref)
        assert batch["masks", "prompt"][b].tolist() == [False] * (Lp - p) + [True] * p
        assert batch["tokens", "prompt"][b].tolist() == [0] * (Lp - p) + r["prompt_ids"]
    want = expected(records)
    assert batch["prompt"].tolist() == [want["prompt_index"][i] for i in idx.tolist()]
    assert batch["terminated"].tolist() == [want["terminated"][i] for i in idx.tolist()]
    assert batch["completion"].tolist() == idx.tolist()
    assert batch["tokens", "response"].dtype == torch.int64
    assert batch["log_probs", "behaviour"].dtype == torch.float32


def test_sample_draws_whole_completions_reproducibly(logged):
    buf, records = logged
    a = buf.sample(256, generator=torch.Generator().manual_seed(3))
    b = buf.sample(256, generator=torch.Generator().manual_seed(3))
    assert a.batch_size == torch.Size([256])
    assert torch.equal(a["completion"], b["completion"])
    assert len(set(a["completion"].tolist())) > 40  # uniform over 60: nearly all drawn
    lengths = torch.tensor([len(r["completion_ids"]) for r in records])
    assert torch.equal(a["masks", "response"].sum(1), lengths[a["completion"]])
    assert a["tokens", "response"].shape[1] == int(lengths[a["completion"]].max())


def test_sample_groups_returns_distinct_members_of_each_group(logged):
    buf, records = logged
    want = expected(records)
    counts: dict[int, int] = {}
    for g in want["group_id"]:
        counts[g] = counts.get(g, 0) + 1
    size = 4
    eligible = {g for g, c in counts.items() if c >= size}
    seen = set()
    for seed in range(20):
        batch = buf.sample_groups(3, size, generator=torch.Generator().manual_seed(seed))
        assert batch.batch_size == torch.Size([3 * size])
        groups = batch["group_id"].reshape(3, size)
        assert (groups == groups[:, :1]).all()  # one group per row of the batch
        assert len(set(groups[:, 0].tolist())) == 3 and set(groups[:, 0].tolist()) <= eligible
        members = batch["completion"].reshape(3, size)
        for row in members.tolist():
            assert len(set(row)) == size
            assert all(want["group_id"][i] == want["group_id"][row[0]] for i in row)
        seen |= set(groups[:, 0].tolist())
    assert seen == eligible  # every eligible group gets drawn
    with pytest.raises(ValueError, match="groups hold at least 61 completions; 1 were asked"):
        buf.sample_groups(1, 61)


def test_prompt_tokens_left_pad(logged):
    buf, records = logged
    want = expected(records)
    tokens, mask = buf.prompt_tokens(torch.arange(buf.num_prompts))
    for p, ids in enumerate(want["prompts"]):
        assert tokens[p][mask[p]].tolist() == list(ids)
        assert mask[p].tolist() == [False] * (tokens.shape[1] - len(ids)) + [True] * len(ids)
    with pytest.raises(IndexError):
        buf.prompt_tokens(torch.tensor([buf.num_prompts]))
    with pytest.raises(IndexError):
        buf.completions(torch.tensor([buf.num_completions]))


def test_torchrl_slice_sampler_draws_d_token_windows(tmp_path):
    d = 3
    records = make_records(40, seed=22, min_len=d)
    import_generations([write_jsonl(tmp_path / "a.jsonl", records)], tmp_path / "buf", **FACTS)
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        rb = ReplayBuffer(
            storage=buf.storage,
            sampler=SliceSampler(slice_len=d, traj_key="completion"),
            batch_size=8 * d,
        )
        torch.manual_seed(0)
        for _ in range(5):
            windows = rb.sample().reshape(8, d)
            completion = windows["completion"]
            assert (completion == completion[:, :1]).all()  # one completion per window
            pos = windows["position"].long()
            assert (pos[:, 1:] - pos[:, :-1] == 1).all()  # consecutive tokens
            for w in range(8):
                r = records[int(completion[w, 0])]
                want = r["completion_ids"][int(pos[w, 0]) : int(pos[w, 0]) + d]
                assert windows["action"][w].tolist() == want
                last = int(pos[w, -1]) == len(r["completion_ids"]) - 1
                assert bool(windows["next", "done"][w, -1]) == last


def test_refresh_sees_a_later_import(tmp_path):
    import_generations(
        [write_jsonl(tmp_path / "a.jsonl", make_records(5, seed=23))], tmp_path / "b", **FACTS
    )
    with GenerationsBuffer.open(tmp_path / "b") as buf:
        assert buf.num_completions == 5
        import_generations(
            [write_jsonl(tmp_path / "c.jsonl", make_records(4, seed=24))], tmp_path / "b"
        )
        buf.refresh()
        assert buf.num_completions == 9
        assert buf.completions(torch.tensor([8]))["completion"].tolist() == [8]


def test_the_mirror_and_the_storage_give_the_same_batch(logged, tmp_path):
    buf, records = logged
    idx = torch.tensor([59, 0, 7, 7, 31])
    with GenerationsBuffer.open(buf.path, mirror_bytes=0) as direct:
        want = direct.completions(idx)
        assert direct.mirrored_rows == 0  # over the budget: read through the storage
    got = buf.completions(idx)
    assert buf.mirrored_rows == len(buf.storage) > 0
    assert set(got.keys(True, True)) == set(want.keys(True, True))
    for key in want.keys(True, True):
        assert torch.equal(got[key], want[key]), key


def test_refresh_extends_a_filled_mirror(tmp_path):
    first, later = make_records(5, seed=23), make_records(4, seed=24)
    import_generations([write_jsonl(tmp_path / "a.jsonl", first)], tmp_path / "b", **FACTS)
    with GenerationsBuffer.open(tmp_path / "b") as buf:
        buf.completions(torch.tensor([0]))  # fills the mirror with the first import's rows
        import_generations([write_jsonl(tmp_path / "c.jsonl", later)], tmp_path / "b")
        buf.refresh()
        batch = buf.completions(torch.arange(9))
        for b, r in enumerate(first + later):
            n = len(r["completion_ids"])
            assert batch["tokens", "response"][b, :n].tolist() == r["completion_ids"]
            want = torch.tensor(r["logprobs"], dtype=torch.float32)
            assert torch.equal(batch["log_probs", "behaviour"][b, :n], want)
