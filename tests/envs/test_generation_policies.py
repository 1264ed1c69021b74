"""The autoregressive policies of zarrl.envs.generations: scoring, heads, sampling, HF adapter.

Models run in float64 where values are compared: two float64 evaluations of the same few-layer
network differ by a few hundred ulps of 2^-52 at most, so 1e-10 separates "equal" from "wrong".
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from tensordict import TensorDict
from zarrl.algorithms import SequenceHeads, SequencePolicy
from zarrl.envs.generations import CausalTransformerPolicy, HFCausalLMPolicy

TOL64 = 1e-10


def _batch(prompts: list[list[int]], completions: list[list[int]], Lp: int | None = None):
    B = len(prompts)
    Lp = Lp or max(len(p) for p in prompts)
    L = max(len(c) for c in completions)
    pt = torch.zeros(B, Lp, dtype=torch.long)
    pm = torch.zeros(B, Lp, dtype=torch.bool)
    rt = torch.zeros(B, L, dtype=torch.long)
    rm = torch.zeros(B, L, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        pt[i, Lp - len(p) :] = torch.tensor(p, dtype=torch.long)
        pm[i, Lp - len(p) :] = True
        rt[i, : len(c)] = torch.tensor(c)
        rm[i, : len(c)] = True
    return TensorDict(
        {
            ("tokens", "prompt"): pt,
            ("masks", "prompt"): pm,
            ("tokens", "response"): rt,
            ("masks", "response"): rm,
            "prompt": torch.arange(B) % 2,
        },
        batch_size=[B],
    )


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The model in float64 with every parameter random (the zero-initialized heads too)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.fixture
def policy():
    return _randomized(CausalTransformerPolicy(4, d_model=16, num_heads=2, num_prompts=2))


def test_implements_the_protocols(policy):
    assert isinstance(policy, SequencePolicy)
    assert isinstance(policy, SequenceHeads)


def test_distribution_over_completions_sums_to_one(policy):
    """Every completion of length <= 3 over 4 tokens (end token 3): their probabilities sum to
    1 per prompt (scores are the generation process's; a mask or position slip breaks this)."""
    eos, limit = 3, 3
    completions = [
        (*prefix, eos) for n in range(limit) for prefix in itertools.product(range(3), repeat=n)
    ] + list(itertools.product(range(3), repeat=limit))
    for prompt in ([1, 2], [0]):
        batch = _batch([prompt] * len(completions), [list(c) for c in completions])
        total = policy.token_log_probs(batch).sum(-1).exp().sum()
        assert abs(float(total) - 1.0) < 1e-9


def test_left_padding_and_later_tokens_do_not_change_scores(policy):
    short = _batch([[1, 2]], [[0, 1, 2]])
    padded = _batch([[1, 2]], [[0, 1, 2]], Lp=5)
    a, b = policy.token_log_probs(short), policy.token_log_probs(padded)
    assert (a - b).abs().max() < TOL64
    changed = _batch([[1, 2]], [[0, 1, 0]])
    c = policy.token_log_probs(changed)
    assert (a[:, :2] - c[:, :2]).abs().max() < TOL64  # causal: earlier tokens unaffected
    assert (a[:, 2] - c[:, 2]).abs().max() > 1e-6
    v1, v2 = policy.value(short), policy.value(padded)
    assert v1.shape == (1, 4) and (v1 - v2).abs().max() < TOL64


def test_generate_scores_its_own_samples(policy):
    prompts = torch.tensor([[0, 1, 2], [0, 0, 2], [1, 1, 1]] * 20)
    mask = torch.tensor([[1, 1, 1], [0, 0, 1], [1, 1, 1]] * 20, dtype=torch.bool)
    out = policy.generate(prompts, mask, 4, 3, generator=torch.Generator().manual_seed(0))
    rm, rt = out["masks", "response"], out["tokens", "response"]
    length = rm.sum(-1)
    assert int(length.max()) <= 4 and bool((length >= 1).all())
    last = rt.gather(1, (length - 1).unsqueeze(-1)).squeeze(-1)
    assert torch.equal(out["terminated"], last == 3)
    assert bool(((length == 4) | out["terminated"]).all())  # stopped by the end or the limit
    eos_inside = (rt == 3) & rm
    eos_inside[torch.arange(len(length)), length - 1] = False
    assert not eos_inside.any()  # nothing follows an end token
    scored = policy.token_log_probs(out)
    assert (scored - out["log_probs", "behaviour"].double()).abs().max() < 1e-6  # float32 copy


def test_log_z_table_and_head(policy):
    batch = _batch([[1], [2], [1]], [[0], [1], [2]])
    batch["prompt"] = torch.tensor([0, 1, 0])
    with torch.no_grad():
        policy.log_z_head.table.copy_(torch.tensor([0.5, -1.0]))
    assert policy.log_z(batch).tolist() == [0.5, -1.0, 0.5]
    batch["prompt"] = torch.tensor([0, 2, 0])
    with pytest.raises(IndexError, match="prompt index 2"):
        policy.log_z(batch)
    head = _randomized(CausalTransformerPolicy(4, d_model=16, num_heads=2, num_prompts=None))
    del batch["prompt"]
    z = head.log_z(batch)
    assert z.shape == (3,) and abs(float(z[0] - z[2])) < TOL64 and abs(float(z[0] - z[1])) > 1e-6


def test_bad_token_ids_and_lengths_are_named(policy):
    with pytest.raises(ValueError, match="token ids must lie in"):
        policy.token_log_probs(_batch([[1]], [[7]]))
    small = CausalTransformerPolicy(4, d_model=8, num_heads=2, max_positions=4)
    with pytest.raises(ValueError, match="exceed the policy's max_positions"):
        small.token_log_probs(_batch([[1, 2]], [[0, 1]]))


# ---------------------------------------------------------------- Hugging Face adapter


def _tiny_llama():
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip(
        "transformers", reason="the llm extra (transformers) is not installed"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=31,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    return transformers.LlamaForCausalLM(config).double()


def _char_tokenizer():
    """An in-memory character tokenizer (``tokenizers`` WordLevel over characters)."""
    tokenizers = pytest.importorskip("tokenizers", reason="the llm extra is not installed")
    chars = "abcdefghijklmnopqrstuvwxyz .!"
    vocab = {"<pad>": 0, **{c: i + 1 for i, c in enumerate(chars)}, "<eos>": 30}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", behavior="isolated")
    return tok


def test_hf_adapter_scores_like_the_model_and_generates():
    llama = _tiny_llama()
    tok = _char_tokenizer()
    policy = HFCausalLMPolicy(llama, num_prompts=2).double()
    assert isinstance(policy, SequencePolicy) and isinstance(policy, SequenceHeads)
    prompt = tok.encode("the cat").ids
    completion = tok.encode("sat.").ids + [30]
    assert len(prompt) == 7 and 0 not in prompt
    batch = _batch([prompt, prompt], [completion, completion[:2]], Lp=9)
    scored = policy.token_log_probs(batch)
    # the model's own log-softmax over the unpadded sequence
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = llama(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    direct = logits.log_softmax(-1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
    assert (scored[0] - direct).abs().max() < 1e-9
    assert (scored[1, :2] - direct[:2]).abs().max() < 1e-9 and bool((scored[1, 2:] == 0).all())
    assert policy.value(batch).shape == (2, len(completion) + 1)
    out = policy.generate(
        batch["tokens", "prompt"],
        batch["masks", "prompt"],
        5,
        30,
        generator=torch.Generator().manual_seed(0),
    )
    again = policy.token_log_probs(out)
    assert (again - out["log_probs", "behaviour"].double()).abs().max() < 1e-6
