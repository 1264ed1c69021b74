"""Variable-length generations round-trip through a ZarrStorage as padded rows plus lengths."""

from __future__ import annotations

import pytest
import torch
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers.sequences import pad_sequences, unpad


def test_generations_of_different_lengths_round_trip_through_the_store(tmp_path):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 1000, (n,), generator=g) for n in (3, 17, 1, 32, 9)]
    logps = [-torch.rand(len(s), generator=g) for s in seqs]
    rows = pad_sequences(seqs, 32)
    rows["log_probs"] = pad_sequences(logps, 32, key="lp")["lp"]
    path = tmp_path / "gen.zarr"
    with ZarrStorage(100, path=path) as storage:
        TensorDictReplayBuffer(storage=storage).extend(rows)
    back = ZarrStorage.open(path, mode="r")[torch.arange(5)]
    for got, want in zip(unpad(back["tokens"], back["length"]), seqs):
        assert torch.equal(got, want)
    for got, want in zip(unpad(back["log_probs"], back["length"]), logps):
        assert torch.equal(got, want)
    assert (back["tokens"][0, 3:] == 0).all()


def test_a_sequence_longer_than_the_width_is_named():
    with pytest.raises(ValueError, match="sequence 1 has 5 steps, more than width=4"):
        pad_sequences([torch.ones(2), torch.ones(5)], 4)
