"""The GMM task trained by the one Trainer: RTB ≡ equivalent Trust-PCL, learning, resume, rows."""

from __future__ import annotations

import pytest
import torch
from gmm_support import final_parameters, load_test_prior, net_key, small
from zarrl.engine.experiments.gmm_posterior.experiment import train_method
from zarrl.engine.experiments.gmm_posterior.reporting import read_curve
from zarrl.engine.tasks.gmm_posterior import pack_trajectories, unpack_trajectories


@pytest.fixture(scope="module")
def prior():
    return load_test_prior()


def test_rtb_and_equivalent_trust_pcl_have_identical_parameters_after_50_updates(tmp_path, prior):
    over = [
        "train.total_updates=50",
        "eval.every_updates=50",
        "train.log_every_updates=50",
        "train.checkpoint_every_updates=50",
    ]
    folders, summaries = {}, {}
    for method in ("rtb", "trust-pcl-equivalent"):
        config = small(method, tmp_path, *over, name=method)
        folders[method] = config.run_dir
        summaries[method] = train_method(config, method)
        assert summaries[method]["updates"] == 50
    rtb, tpcl = (final_parameters(folders[m]) for m in ("rtb", "trust-pcl-equivalent"))
    assert rtb.keys() == tpcl.keys() and len(rtb) > 5
    moved = max(float((rtb[k] - prior.state_dict()[net_key(k)]).abs().max()) for k in rtb)
    assert moved > 1e-3  # the parameters did move
    for key in rtb:
        torch.testing.assert_close(tpcl[key], rtb[key], rtol=1e-5, atol=1e-6)
    log_z = [summaries[m]["log_z"] for m in folders]
    assert log_z[0] == pytest.approx(log_z[1], abs=1e-5) and abs(log_z[0]) > 0.1


def test_a_few_hundred_rtb_updates_bring_wrong_mode_mass_clearly_below_the_priors(tmp_path):
    over = [
        "train.total_updates=150",
        "train.batch_size=64",
        "eval.every_updates=150",
        "train.log_every_updates=150",
        "train.checkpoint_every_updates=150",
        "env.options.explore_hold_updates=50",
        "env.options.explore_anneal_updates=150",
        "optim.lr_policy=3e-3",
        "env.options.eval_samples=1000",
        "buffer.max_size=9600",  # every trajectory kept: no ring wrap-around
    ]
    config = small("rtb", tmp_path, *over)
    train_method(config, "rtb")
    curve = read_curve(config.run_dir)
    before, after = curve["wrong_mode_mass"]
    assert curve["update"] == [0, 150]
    assert before > 0.15, before  # the 25-mode prior puts much mass on the 16 wrong modes
    assert after < 0.5 * before, (before, after)


def test_interrupted_run_resumes_from_its_checkpoint_to_the_same_parameters(tmp_path):
    replay = "train.replay_ratio=0.5"
    whole = train_method(small("rtb", tmp_path, replay, name="whole"), "rtb")
    cut = small("rtb", tmp_path, replay, "train.total_updates=3", name="cut")
    assert train_method(cut, "rtb")["updates"] == 3
    resumed = train_method(small("rtb", tmp_path, replay, name="cut"), "rtb")
    a, b = final_parameters(tmp_path / "whole"), final_parameters(tmp_path / "cut")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    assert resumed["log_z"] == whole["log_z"] and resumed["updates"] == 6
    assert read_curve(tmp_path / "cut")["update"] == [0, 3, 6]


def test_buffer_rows_round_trip_to_the_env_layout(prior):
    from zarrl.envs.gmm_posterior import DiffusionActor

    for reference in (None, prior):
        td = DiffusionActor(prior).sample_trajectories(5, extra_std=0.3, reference=reference)
        rows = pack_trajectories(td)
        assert rows.batch_size == (5,) and rows["path"].shape == (5, 101, 2)
        assert ("ref_log_prob" in rows) == (reference is not None)
        back = unpack_trajectories(rows)
        assert set(back.keys(True, True)) == set(td.keys(True, True))
        for key in td.keys(True, True):
            torch.testing.assert_close(back.get(key), td.get(key))
