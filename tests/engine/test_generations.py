"""Logged generations end to end: import → offline training through the Trainer → ``zarrl score``
every possible completion → total variation to the exact target, by enumeration.

The exact checks (RTB, Trust-PCL d = 2, KL-REINFORCE; full-sequence Trust-PCL by its
equivalence to RTB) share one imported buffer (a module fixture). The logs: 8000 completions per
prompt, 2 prompts, sampled from a known random autoregressive prior over 4 tokens + the end
token, length <= 4 (341 possible completions a prompt), with a known Gaussian log_reward per
completion; β = 1. The target prior·exp(β·log_reward), normalized per
prompt, is computed by enumeration (``RandomAutoregressivePrior.target``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from generations_exact_support import exact_prior, import_exact_logs
from zarrl.engine.cli import main
from zarrl.engine.generations_io import read_jsonl, write_jsonl

PER_PROMPT = 8000
BETA = 1.0
UPDATES = 700
EQUIV_UPDATES = 10


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """``(folder, buffer path, file of every completion)`` for the toy prior's logs."""
    root = tmp_path_factory.mktemp("generations")
    buffer, every = import_exact_logs(root, PER_PROMPT)
    return root, buffer, every


def _train(logged, config: str, name: str, *overrides: str) -> Path:
    root, buffer, _ = logged
    args = ["train", config, "--buffer", str(buffer), "--quiet"]
    args += [f"run.dir={root / 'runs'}", f"run.name={name}", f"train.total_updates={UPDATES}"]
    assert main([*args, *overrides]) == 0
    return root / "runs" / name


def _tv(logged, run: Path) -> list[float]:
    _, _, every = logged
    out = run / "scored.jsonl"
    assert main(["score", str(run), str(every), "--out", str(out)]) == 0
    records = read_jsonl(out)
    assert all(abs(sum(r["policy_logprobs"]) - r["policy_logprob"]) < 1e-9 for r in records)
    tv = exact_prior().total_variation(records, "policy_logprob", BETA)
    print(f"{run.name}: TV per prompt {[round(x, 4) for x in tv]}", file=sys.stderr)
    return tv


def test_rtb_learns_the_tilted_prior(logged):
    run = _train(logged, "generations/rtb", "rtb", f"loss.beta={BETA}")
    assert max(_tv(logged, run)) < 0.05
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == UPDATES and summary["loss"] == "sequence_rtb"


def test_trust_pcl_full_sequence_form_trains_as_rtb(logged):
    """Full-sequence Trust-PCL at β = 1 has the residual C = −δ of RTB, hence RTB's loss and
    gradients: through the Trainer, from the same seed and batches, the two runs' parameters
    agree after a few updates up to float32 rounding (RTB sums δ in float64, Trust-PCL in
    float32), far below one Adam step (lr 1e-3) — so it inherits RTB's exact check above. The
    same check fails against RTB at β = 2 (another target)."""
    steps = [f"train.total_updates={EQUIV_UPDATES}", "eval.every_updates=1000"]
    rtb = _train(logged, "generations/rtb", "equiv_rtb", *steps)
    tpcl = _train(logged, "generations/trust_pcl", "equiv_tpcl", "loss.rollout=full", *steps)
    other = _train(logged, "generations/rtb", "equiv_beta2", "loss.beta=2.0", *steps)

    def params(run: Path) -> dict[str, torch.Tensor]:
        state = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
        return state["modules"]["actor"]

    a, b, c = params(rtb), params(tpcl), params(other)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - c[k]).abs().max()) for k in a)
    print(f"full-sequence Trust-PCL vs RTB: max |Δθ| {gap:.2e} (β=2: {moved:.2e})", file=sys.stderr)
    assert gap < 1e-2 * 1e-3 < moved


def test_trust_pcl_two_token_windows_with_a_value_head(logged):
    """400 updates at twice the shipped learning rates (700 at 1x reach 0.025, docs)."""
    faster = ["train.total_updates=400", "optim.lr_policy=0.002", "optim.lr_value=0.002"]
    run = _train(logged, "generations/trust_pcl", "tpcl_d2", "loss.rollout=2", *faster)
    assert max(_tv(logged, run)) < 0.08


def test_kl_reinforce_off_policy_is_reported(logged):
    """Off-policy KL-REINFORCE from the same logs (sequence-level weights truncated at 3): its
    TV is stated (printed), and it must have moved well toward the target from the prior."""
    run = _train(logged, "generations/kl_reinforce", "kl")
    tv = _tv(logged, run)
    prior = exact_prior()
    start = (0.5 * (prior.log_prob_table().exp() - prior.target(BETA)).abs().sum(-1)).tolist()
    assert all(t < 0.5 * s for t, s in zip(tv, start))
    ess = (run / "logs" / "kl" / "scalars" / "train" / "ess.csv").read_text().splitlines()
    assert ess and 0 < float(ess[-1].split(",")[-1]) <= 256


def test_sample_output_imports_as_the_next_round(logged, tmp_path):
    root, _, _ = logged
    run = root / "runs" / "rtb"
    if not run.is_dir():
        run = _train(logged, "generations/rtb", "rtb", "train.total_updates=5")
    out = tmp_path / "round2.jsonl"
    assert main(["sample", str(run), "--n", "50", "--prompt-ids", "0,1", "--out", str(out)]) == 0
    records = read_jsonl(out)
    assert len(records) == 50 and all(r["prompt_ids"] == [0, 1] for r in records)
    for r in records:
        assert 1 <= len(r["completion_ids"]) <= 4 and len(r["logprobs"]) == len(r["completion_ids"])
        assert r["completion_ids"][-1] == 4 or len(r["completion_ids"]) == 4
        r["log_reward"] = 0.0
    write_jsonl(out, records)
    scored = tmp_path / "scored.jsonl"
    assert main(["score", str(run), str(out), "--out", str(scored)]) == 0
    for r in read_jsonl(scored):  # the samples' logprobs are the policy's own (float32 copy)
        assert max(abs(a - b) for a, b in zip(r["logprobs"], r["policy_logprobs"])) < 1e-5
    code = main(
        ["import", "generations", str(out), "--buffer", str(tmp_path / "next.zarr")]
        + ["--vocab-size", "5", "--eos-id", "4", "--max-new-tokens", "4"]
    )
    assert code == 0


def test_resume_continues_exactly(logged, tmp_path):
    _, buffer, _ = logged
    base = ["train", "generations/rtb", "--buffer", str(buffer), "--quiet"]
    base += ["train.batch_size=32", "train.checkpoint_every_updates=3", "train.log_every_updates=3"]
    assert main([*base, f"run.dir={tmp_path}", "run.name=whole", "train.total_updates=6"]) == 0
    assert main([*base, f"run.dir={tmp_path}", "run.name=cut", "train.total_updates=3"]) == 0
    assert (
        main(["train", "--resume", str(tmp_path / "cut"), "train.total_updates=6", "--quiet"]) == 0
    )
    a = torch.load(tmp_path / "whole" / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "final.pt", weights_only=True)
    assert a["counters"]["updates"] == b["counters"]["updates"] == 6
    for key, value in a["modules"]["actor"].items():
        assert torch.equal(value, b["modules"]["actor"][key]), key


def test_wrong_mode_and_missing_buffer_are_named(logged, tmp_path, capsys):
    _, buffer, _ = logged
    code = main(
        ["train", "generations/rtb", "--buffer", str(buffer), "--quiet", "train.mode=online"]
        + [f"run.dir={tmp_path}"]
    )
    assert code == 2 and "learns offline from a stored buffer" in capsys.readouterr().err
    code = main(["train", "generations/rtb", "--buffer", str(tmp_path / "none.zarr"), "--quiet"])
    assert code == 1 and "does not exist" in capsys.readouterr().err
    code = main(["score", str(tmp_path / "no_run"), str(tmp_path / "x.jsonl"), "--out", "y"])
    assert code == 1


def test_demo_generations_runs_end_to_end_small(tmp_path):
    """The demo's rounds on a tiny budget: the table, its file and the figure are written, the
    prior's own samples are at KL 0 from it and the grammar's log-probs are normalized."""
    import itertools
    import math

    from zarrl.engine.generations_demo import CONSONANTS, VOWELS, grammar_log_probs, run_demo

    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    total = sum(
        math.exp(sum(grammar_log_probs("".join(s))))
        for k in range(1, 5)
        for s in itertools.product(syllables, repeat=k)
    )
    assert abs(total - 1.0) < 1e-9
    figure = tmp_path / "fig.png"
    table = run_demo(
        tmp_path / "demo",
        words=300,
        samples=200,
        pretrain_updates=3,
        finetune_updates=3,
        figure=figure,
        progress=False,
    )
    before, after = table["prior (before)"], table["RTB fine-tuned (after)"]
    assert abs(before["KL to the prior (nats)"]) < 1e-3  # its own samples, float32 log-probs
    assert 0 < before["distinct completions"] <= 200 and 0 < after["distinct completions"] <= 200
    assert figure.is_file() and (tmp_path / "demo" / "table.md").is_file()


def test_demo_generations_refuses_unknown_options(tmp_path, capsys):
    assert main(["demo", "generations", "--runs", str(tmp_path), "bogus=1"]) == 2
    assert "expected key=value with key one of" in capsys.readouterr().err


def test_policy_heads_get_their_own_optimizer_groups():
    from zarrl.algorithms import SequenceTrustPCLLoss
    from zarrl.engine.optim import parameter_groups
    from zarrl.envs.generations import CausalTransformerPolicy

    policy = CausalTransformerPolicy(5, d_model=8, num_heads=2, num_prompts=3)
    groups = parameter_groups(
        SequenceTrustPCLLoss(policy), {"policy": 1.0, "value": 2.0, "log_z": 3.0}
    )
    by_name = {g["name"]: g for g in groups}
    assert [p.shape for p in by_name["log_z"]["params"]] == [torch.Size([3])]
    assert {p.shape for p in by_name["value"]["params"]} == {torch.Size([1, 8]), torch.Size([1])}
    assert by_name["log_z"]["lr"] == 3.0 and by_name["value"]["lr"] == 2.0
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in policy.parameters())


# ------------------------------------------------ metrics and the buffer path, on every completion
@pytest.fixture(scope="module")
def enumerated(tmp_path_factory):
    """``(folder, buffer)``: every possible completion of each prompt logged once, with its
    reference log-probs (the prior's): the completion space is enumerable and fully logged."""
    root = tmp_path_factory.mktemp("enumerated")
    records = exact_prior().all_records()
    for r in records:
        r["ref_logprobs"] = r["logprobs"]
    write_jsonl(root / "all.jsonl", records)
    buffer = root / "buffer.zarr"
    code = main(
        ["import", "generations", str(root / "all.jsonl"), "--buffer", str(buffer)]
        + ["--vocab-size", "5", "--eos-id", "4", "--max-new-tokens", "4"]
    )
    assert code == 0
    return root, buffer


def _scalar(run: Path, name: str) -> list[tuple[int, float]]:
    lines = (run / "logs" / run.name / "scalars" / "eval" / f"{name}.csv").read_text().split()
    return [(int(a), float(b)) for a, b in (line.split(",") for line in lines)]


def test_evaluation_metrics_match_enumeration(enumerated):
    """At update 0 the policy is uniform over the 5 tokens (zero LM head): its KL to the prior
    and mean log_reward are known exactly by enumeration, and the sample estimates lie within 5
    standard errors of them (the standard deviations also by enumeration). ``tv_to_target``
    equals the TV computed from ``zarrl score`` of every completion, at the end of training."""
    root, buffer = enumerated
    n = 1000  # samples per prompt
    args = ["train", "generations/rtb", "--buffer", str(buffer), "--quiet"]
    args += [f"run.dir={root / 'runs'}", "run.name=metrics", "train.total_updates=3"]
    args += ["eval.at_start=true", "eval.every_updates=3", f"env.options.eval_samples={n}"]
    assert main(args) == 0
    run = root / "runs" / "metrics"
    prior = exact_prior()
    lengths = torch.tensor([len(c) for c in prior.completions], dtype=torch.float64)
    uniform = -lengths * math.log(5)  # log π(y) of the uniform policy [N]
    ratio = uniform - prior.log_prob_table()  # [P, N]
    p = uniform.exp()
    for name, value in (("kl_to_reference", ratio), ("log_reward_mean", prior.log_reward)):
        mean = (p * value).sum(-1).mean()  # the two prompts are sampled equally
        var = (p * (value - (p * value).sum(-1, keepdim=True)) ** 2).sum(-1).mean()
        step, estimate = _scalar(run, name)[0]
        assert step == 0 and abs(estimate - float(mean)) < 5 * math.sqrt(float(var) / (2 * n))
    assert _scalar(run, "logged_share")[0][1] == 1.0
    summary = json.loads((run / "summary.json").read_text())
    out = run / "scored.jsonl"
    assert main(["score", str(run), str(root / "all.jsonl"), "--out", str(out)]) == 0
    tv = prior.total_variation(read_jsonl(out), "policy_logprob", BETA)
    # both sides score in float32: log-prob errors ~1e-6 over 341 completions a prompt
    assert abs(summary["tv_to_target"] - max(tv)) < 1e-5
    assert _scalar(run, "tv_to_target")[-1] == (3, summary["tv_to_target"])
    assert 1 <= summary["distinct_completions"] <= n


def test_sample_reopens_a_relative_buffer_path_from_anywhere(enumerated, tmp_path, monkeypatch):
    root, _ = enumerated
    monkeypatch.chdir(root)
    args = ["train", "generations/rtb", "--buffer", "buffer.zarr", "--quiet"]
    assert main([*args, f"run.dir={tmp_path}", "run.name=rel", "train.total_updates=1"]) == 0
    state = torch.load(tmp_path / "rel" / "checkpoints" / "final.pt", weights_only=True)
    assert state["extra"]["buffer_path"] == str(root / "buffer.zarr")
    monkeypatch.chdir(tmp_path)
    from zarrl.engine import checkpoint

    loads = []
    real_load = checkpoint.load_checkpoint
    monkeypatch.setattr(
        checkpoint,
        "load_checkpoint",
        lambda path, **kw: loads.append(path) or real_load(path, **kw),
    )
    assert main(["sample", str(tmp_path / "rel"), "--n", "3", "--out", "s.jsonl"]) == 0
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 6  # 3 for each prompt of the buffer
    assert [p.name for p in loads] == ["final.pt"]  # read once, for the policy and the prompts


def test_other_tasks_refuse_a_hugging_face_model():
    from zarrl.engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.kind: 'hf'.*generations task only"):
        load_config("cartpole_trust_pcl", ["model.kind=hf"])
    with pytest.raises(ConfigError, match="model.kind"):
        load_config("generations/rtb", ["model.kind=gguf"])


def test_offline_training_builds_one_policy(logged, tmp_path, monkeypatch):
    """Offline runs never act: no second (acting) copy of the policy is built."""
    from zarrl.engine.tasks.generations import GenerationsTask

    built = []
    original = GenerationsTask.build_actor

    def counting(self, *args, **kwargs):
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationsTask, "build_actor", counting)
    _, buffer, _ = logged
    args = ["train", "generations/rtb", "--buffer", str(buffer), "--quiet"]
    args += [f"run.dir={tmp_path}", "run.name=one", "train.total_updates=2"]
    assert main(args) == 0
    assert len(built) == 1
