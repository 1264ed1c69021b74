"""``zarrl train`` with a Hugging Face causal LM (``model.kind: hf``): a tiny Llama saved with
``save_pretrained`` to a temporary folder (nothing is fetched from a hub), trained on the toy
logs through the Trainer, checkpointed and resumed, then used by ``zarrl score`` and
``zarrl sample``."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from generations_exact_support import import_exact_logs
from zarrl.engine.cli import main
from zarrl.engine.generations_io import read_jsonl

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip(
    "transformers", reason="the llm extra (transformers) is not installed: pip install 'zarrl[llm]'"
)

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(folder, buffer, saved model folder, file of every completion)``."""
    root = tmp_path_factory.mktemp("generations_hf")
    buffer, every = import_exact_logs(root, 200)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=5, **TINY))
    llama.save_pretrained(root / "llama")
    return root, buffer, root / "llama", every


def _args(setup, name: str, *extra: str) -> list[str]:
    root, buffer, model, _ = setup
    return ["train", "generations/rtb", "--buffer", str(buffer), "--quiet"] + [
        f"run.dir={root / 'runs'}",
        f"run.name={name}",
        "model.kind=hf",
        f"model.hf.path={model}",
        "train.batch_size=32",
        "train.log_every_updates=2",
        "train.checkpoint_every_updates=2",
        "eval.every_updates=2",
        "env.options.eval_samples=16",
        *extra,
    ]


def test_hf_policy_trains_resumes_scores_and_samples(setup, tmp_path):
    root, _, model, every = setup
    assert main(_args(setup, "whole", "train.total_updates=4")) == 0
    assert main(_args(setup, "cut", "train.total_updates=2")) == 0
    assert main(["train", "--resume", str(root / "runs" / "cut"), "train.total_updates=4"]) == 0
    runs = root / "runs"
    a = torch.load(runs / "whole" / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(runs / "cut" / "checkpoints" / "final.pt", weights_only=True)
    assert any(k.startswith("model.model.layers.") for k in a["modules"]["actor"])
    for key, value in a["modules"]["actor"].items():
        assert torch.equal(value, b["modules"]["actor"][key]), key
    # trained: the saved model's weights moved
    start = transformers.AutoModelForCausalLM.from_pretrained(model, local_files_only=True)
    head = a["modules"]["actor"]["model.lm_head.weight"]
    assert not torch.equal(head, start.lm_head.weight.detach())
    # the checkpoint alone rebuilds the model: the folder is no longer needed
    moved = tmp_path / "gone"
    shutil.move(model, moved)
    try:
        out = tmp_path / "scored.jsonl"
        assert main(["score", str(runs / "whole"), str(every), "--out", str(out)]) == 0
        scored = read_jsonl(out)
        total = torch.tensor([r["policy_logprob"] for r in scored], dtype=torch.float64)
        # every completion of each prompt scored: the policy's probabilities sum to 1 per prompt
        assert (total.exp().view(2, -1).sum(-1) - 1).abs().max() < 1e-4
        sampled = tmp_path / "sampled.jsonl"
        assert main(["sample", str(runs / "whole"), "--n", "20", "--out", str(sampled)]) == 0
        records = read_jsonl(sampled)
        assert len(records) == 40 and all(1 <= len(r["completion_ids"]) <= 4 for r in records)
    finally:
        shutil.move(moved, model)
    summary = json.loads((runs / "whole" / "summary.json").read_text())
    assert 1 <= summary["distinct_completions"] <= 16 and 0 < summary["logged_share"] <= 1
    assert math.isfinite(summary["kl_to_reference"] + summary["log_reward_mean"])
    curve = runs / "whole" / "logs" / "whole" / "scalars" / "eval" / "distinct_completions.csv"
    assert len(curve.read_text().splitlines()) == 2  # evaluated at updates 2 and 4


def test_hf_policy_from_a_config(setup):
    root, buffer, _, _ = setup
    overrides = [f"model.hf.config.{k}={v}" for k, v in TINY.items()]
    code = main(
        ["train", "generations/trust_pcl", "--buffer", str(buffer), "--quiet"]
        + [f"run.dir={root / 'runs'}", "run.name=from_config", "model.kind=hf"]
        + ["train.batch_size=16", "train.total_updates=2", *overrides]
    )
    assert code == 0
    state = torch.load(
        root / "runs" / "from_config" / "checkpoints" / "final.pt", weights_only=True
    )
    config = json.loads(state["extra"]["task"]["hf_config"])
    assert config["model_type"] == "llama" and config["vocab_size"] == 5
    assert config["hidden_size"] == 32


def test_hf_section_errors_are_named(setup, tmp_path, capsys):
    root, buffer, model, _ = setup
    base = ["train", "generations/rtb", "--buffer", str(buffer), "--quiet", f"run.dir={tmp_path}"]
    assert main([*base, "model.kind=hf"]) == 2
    assert "exactly one of path" in capsys.readouterr().err
    assert main([*base, "model.kind=hf", f"model.hf.path={tmp_path}"]) == 2
    assert "not a save_pretrained folder" in capsys.readouterr().err
    tiny = [f"model.hf.config.{k}={v}" for k, v in TINY.items()]
    assert main([*base, "model.kind=hf", "model.hf.config.vocab_size=7", *tiny]) == 2
    assert "vocab_size is 7, the buffer's 5" in capsys.readouterr().err
    assert main([*base, "model.kind=hf", f"model.hf.path={model}", "model.hf.bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # a refused start writes nothing
