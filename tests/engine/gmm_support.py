"""Shared pieces of the GMM experiment tests: the prior, a fast config, checkpoint parameters."""

from __future__ import annotations

import torch
from zarrl.engine.experiments.gmm_posterior.config import load_gmm_config, method_config_path
from zarrl.envs.gmm_posterior import DEFAULT_PRIOR_PATH, load_prior

PRIOR = DEFAULT_PRIOR_PATH


def load_test_prior():
    """The prior the tests fine-tune."""
    return load_prior(PRIOR)


def small(method: str, tmp_path, *overrides: str):
    """A method's config shrunk to run in about a second."""
    base = [
        f"run.dir={tmp_path}",
        "run.name=exp",
        "run.device=cpu",
        "run.num_threads=1",
        "train.updates=6",
        "train.batch_size=16",
        "train.eval_every=3",
        "train.checkpoint_every=3",
        "buffer.max_size=64",
        "eval.num_samples=64",
        "eval.w2=false",
        "progress=false",
    ]
    return load_gmm_config(method_config_path(method), [*base, *overrides])


def final_parameters(folder) -> dict[str, torch.Tensor]:
    ckpt = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    return {
        k.split("actor_network_params.")[-1]: v
        for k, v in ckpt["modules"]["loss"].items()
        if "actor_network_params" in k and "target" not in k
    }


def net_key(key: str) -> str:
    return key.split("drift_net.")[-1]
