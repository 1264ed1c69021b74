"""The token-appending sequence environment."""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs.utils import check_env_specs
from zarrl.envs.sequence import SequenceEnv, make_synthetic_tree_env
from zarrl.envs.tree_solver import SequenceTree


def _count_ones(tokens, length):
    return (tokens == 1).sum(-1).float() + 0.5 * length.float()


@pytest.mark.parametrize("batch_size", [(), (5,)])
@pytest.mark.parametrize("end_token", [None, 0])
def test_sequence_env_passes_check_env_specs(batch_size, end_token):
    env = SequenceEnv(3, 4, _count_ones, end_token=end_token, batch_size=batch_size)
    check_env_specs(env, seed=0)


def test_rollout_appends_tokens_and_pays_the_reward_at_the_end():
    env = SequenceEnv(3, 4, _count_ones, batch_size=(6,))
    td = env.rollout(10, break_when_any_done=True)
    assert td.shape == (6, 4)
    actions = td["action"]
    final = td["next", "tokens"][:, -1]
    assert torch.equal(final, actions)
    assert torch.all(td["next", "reward"][:, :-1] == 0)
    want = (actions == 1).sum(-1).float() + 0.5 * 4
    assert torch.equal(td["next", "reward"][:, -1, 0], want)
    assert torch.all(td["next", "terminated"][:, -1]) and not td["next", "done"][:, :-1].any()


def test_end_token_stops_the_episode_and_node_ids_match_the_tree():
    env, tree, table = make_synthetic_tree_env(3, 4, end_token=2, batch_size=(8,), seed=1)
    env.set_seed(0)
    td = env.rollout(12, break_when_any_done=False)  # auto-resets finished sequences
    nxt = td["next"]
    node = tree.node_index(nxt["tokens"], nxt["length"])
    assert torch.equal(nxt["node"], node)
    assert torch.equal(nxt["terminated"].squeeze(-1), tree.terminal[node])
    ended_on_end_token = (td["action"] == 2) & (nxt["length"] < 4)
    assert ended_on_end_token.any() and nxt["terminated"].squeeze(-1)[ended_on_end_token].all()
    paid = nxt["reward"].squeeze(-1)
    assert torch.equal(paid, torch.where(tree.terminal[node], table[node].float(), 0.0))
    assert (td["length"] == 0).sum() > 8  # several episodes per row


def test_partial_reset_restarts_only_finished_sequences():
    env = SequenceEnv(2, 3, _count_ones, end_token=0, batch_size=(2,))
    td = env.reset()
    td["action"] = torch.tensor([0, 1])
    out, td_next = env.step_and_maybe_reset(td)
    assert out["next", "done"].squeeze(-1).tolist() == [True, False]
    assert td_next["length"].tolist() == [0, 1]
    assert td_next["node"].tolist() == [0, 2]


def test_collector_rollouts_fill_a_replay_buffer():
    env = SequenceEnv(3, 4, _count_ones, end_token=0, batch_size=(4,))
    collector = Collector(env, None, frames_per_batch=32, total_frames=64)
    rb = ReplayBuffer(storage=LazyTensorStorage(256))
    for batch in collector:
        rb.extend(batch.reshape(-1))
    collector.shutdown()
    assert len(rb) == 64
    sample = rb.sample(16)
    assert sample["next", "length"].min() >= 1


def test_env_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        SequenceEnv(1, 3, _count_ones)
    with pytest.raises(ValueError, match="end_token"):
        SequenceEnv(3, 3, _count_ones, end_token=5)
    with pytest.raises(TypeError, match="reward_fn"):
        SequenceEnv(3, 3, "not callable")
    with pytest.raises(ValueError, match="batch_size"):
        SequenceEnv(3, 3, _count_ones, batch_size=(2, 2))
    env = SequenceEnv(3, 3, _count_ones, batch_size=(2,))
    td = env.reset()
    td["action"] = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="token ids"):
        env.step(td)
    assert SequenceTree(3, 3).num_nodes == env.num_nodes
