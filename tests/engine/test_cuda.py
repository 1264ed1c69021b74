"""GPU paths: run where CUDA is present (a lent GPU machine), skipped on CPU-only machines.

The buffer's on-device cache, the CartPole learner on CUDA, and the GMM experiment's RTB ≡ Trust-PCL
equivalence with sampling, scoring and updates on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import CachedSliceSampler, ZarrStorage

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_bounded_cache_on_the_gpu_serves_slices_of_stored_rows(tmp_path):
    n, traj_len = 640, 20
    rows = torch.arange(n)
    data = TensorDict(
        {"obs": rows.float().unsqueeze(-1).expand(n, 8).clone(), "episode": rows // traj_len},
        batch_size=[n],
    )
    storage = ZarrStorage(
        n, path=tmp_path / "g.zarr", chunk_rows=32, cache=1, cache_device="cuda", device="cuda"
    )
    rb = TensorDictReplayBuffer(
        storage=storage, sampler=CachedSliceSampler(num_slices=4, traj_key="episode"), batch_size=32
    )
    rb.extend(data)
    for _ in range(3):
        batch = rb.sample()
        assert batch["obs"].device.type == "cuda"
        obs = batch["obs"][:, 0].view(4, 8).cpu()
        assert torch.equal(obs[:, 1:] - obs[:, :-1], torch.ones(4, 7))
        assert torch.equal(batch["episode"].cpu(), (obs.reshape(-1) // traj_len).long())
    reader = ZarrStorage.open(tmp_path / "g.zarr", mode="r")
    assert torch.equal(reader[:]["obs"], data["obs"])  # the durable copy is the written data
    storage.close()


def test_cartpole_learner_trains_on_cuda_and_checkpoints_load_on_cpu(tmp_path, tiny):
    from zarrl.engine.checkpoint import load_checkpoint
    from zarrl.engine.trainer import Trainer

    trainer = Trainer(tiny(tmp_path, "run.device=cuda"))
    try:
        summary = trainer.run()
        assert all(p.device.type == "cuda" for p in trainer.loss.parameters())
    finally:
        trainer.close()
    assert summary["updates"] > 0
    ckpt = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "final.pt")
    assert ckpt["counters"]["frames"] == 600
    weights = [v for v in ckpt["modules"]["loss"].values() if isinstance(v, torch.Tensor)]
    assert weights and all(v.device.type == "cpu" and torch.isfinite(v).all() for v in weights)


def test_gmm_rtb_and_equivalent_trust_pcl_stay_identical_on_cuda(tmp_path):
    from zarrl.engine.experiments.gmm_posterior.config import load_method_config
    from zarrl.engine.experiments.gmm_posterior.experiment import train_method

    over = [
        f"run.dir={tmp_path}",
        "run.device=cuda",
        "train.total_updates=20",
        "train.batch_size=64",
        "train.log_every_updates=20",
        "train.checkpoint_every_updates=20",
        "eval.every_updates=20",
        "buffer.max_size=256",
        "env.options.eval_samples=256",
        "env.options.eval_w2=false",
        "log.progress=false",
    ]
    params = {}
    for method in ("rtb", "trust-pcl-equivalent"):
        config = load_method_config(method, [*over, f"run.name={method}"])
        summary = train_method(config, method)
        assert summary["updates"] == 20
        ckpt = torch.load(tmp_path / method / "checkpoints" / "last.pt", weights_only=True)
        params[method] = {
            k.split("actor_network_params.")[-1]: v
            for k, v in ckpt["modules"]["loss"].items()
            if "actor_network_params" in k and "target" not in k
        }
    assert params["rtb"].keys() == params["trust-pcl-equivalent"].keys()
    for key, value in params["rtb"].items():
        torch.testing.assert_close(params["trust-pcl-equivalent"][key], value, rtol=1e-4, atol=1e-5)
