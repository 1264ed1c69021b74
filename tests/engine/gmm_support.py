"""Shared pieces of the GMM experiment tests: the prior, a fast config, checkpoint parameters."""

from __future__ import annotations

import torch
from zarrl.engine.experiments.gmm_posterior.config import load_method_config
from zarrl.envs.gmm_posterior import DEFAULT_PRIOR_PATH, load_prior

PRIOR = DEFAULT_PRIOR_PATH


def load_test_prior():
    """The prior the tests fine-tune."""
    return load_prior(PRIOR)


def small(method: str, tmp_path, *overrides: str, name: str = "exp"):
    """A method's learner config shrunk to run in about a second (run folder ``tmp_path/name``)."""
    base = [
        f"run.dir={tmp_path}",
        f"run.name={name}",
        "run.device=cpu",
        "run.num_threads=1",
        "train.total_updates=6",
        "train.batch_size=16",
        "train.log_every_updates=3",
        "train.checkpoint_every_updates=3",
        "eval.every_updates=3",
        "buffer.max_size=64",
        "env.options.eval_samples=64",
        "env.options.eval_w2=false",
        "log.progress=false",
    ]
    return load_method_config(method, [*base, *overrides])


def final_parameters(folder) -> dict[str, torch.Tensor]:
    ckpt = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    return {
        k.split("actor_network_params.")[-1]: v
        for k, v in ckpt["modules"]["loss"].items()
        if "actor_network_params" in k and "target" not in k
    }


def net_key(key: str) -> str:
    return key.split("drift_net.")[-1]
