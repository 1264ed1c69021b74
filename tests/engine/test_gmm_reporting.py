"""The GMM experiment's report: mean ± std over seeds, markdown/CSV table, partial runs, figures."""

from __future__ import annotations

import csv
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from zarrl.engine.experiments.gmm_posterior.experiment import collect_summaries
from zarrl.engine.experiments.gmm_posterior.reporting import (
    aggregate_summaries,
    format_results_markdown,
    plot_learning_curves,
    plot_sample_panels,
    write_results,
)


def summary(seed: int, tv: float, **extra) -> dict:
    base = {"method": "rtb", "seed": seed, "updates": 10, "tv": tv, "wrong_mode_mass": 0.0}
    return {**base, "modes_hit": 9.0, "elbo": -0.5, "train_s": 5.0, "updates_per_s": 2.0, **extra}


def test_aggregate_takes_mean_and_sample_std_over_seeds_and_skips_nan():
    (row,) = aggregate_summaries({"rtb": [summary(0, 0.1), summary(1, 0.3), summary(2, 0.2)]})
    assert row["seeds"] == 3 and row["updates"] == 10 and not row["partial"]
    assert row["tv_mean"] == pytest.approx(0.2) and row["tv_std"] == pytest.approx(0.1)
    assert math.isnan(row["log_z_mean"])  # missing everywhere: no value, not 0
    (one,) = aggregate_summaries({"rtb": [summary(0, 0.1, log_z=math.nan), summary(1, 0.3)]})
    assert one["tv_std"] > 0 and math.isnan(one["log_z_mean"])


def test_markdown_table_shows_mean_pm_std_and_marks_running_methods(tmp_path):
    rows = aggregate_summaries(
        {
            "rtb": [summary(0, 0.1), summary(1, 0.3)],
            "trust-pcl": [summary(0, 0.5, partial=True, updates=4)],
        }
    )
    text = format_results_markdown(rows)
    assert "| rtb | 2 | 10 | 9.0 ± 0.0 | 0.0000 ± 0.0000 | 0.200 ± 0.141 |" in text
    assert "| trust-pcl | 1 | 4 (running) | 9.0 | 0.0000 | 0.500 |" in text
    md, csv_path = write_results(rows, tmp_path)
    assert md.read_text() == text
    with open(csv_path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert [r["method"] for r in read] == ["rtb", "trust-pcl"]
    assert float(read[0]["tv_mean"]) == pytest.approx(0.2)


def test_collect_summaries_reads_finished_runs_and_the_last_curve_row_of_unfinished_ones(tmp_path):
    done = tmp_path / "rtb" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps(summary(0, 0.1)))
    scalars = tmp_path / "trust-pcl" / "seed1" / "logs" / "seed1" / "scalars"
    (scalars / "eval").mkdir(parents=True)
    (scalars / "perf").mkdir()
    (scalars / "train").mkdir()
    # the Trainer's CSVLogger files: one "step,value" row per logged step
    (scalars / "eval" / "tv.csv").write_text("0,0.6\n250,0.4\n")
    (scalars / "eval" / "wrong_mode_mass.csv").write_text("0,0.5\n250,0.1\n")
    (scalars / "train" / "loss.csv").write_text("250,3.0\n")
    (scalars / "perf" / "updates_per_s.csv").write_text("250,5.0\n")
    (tmp_path / "guidance" / "seed0").mkdir(parents=True)  # nothing written yet: skipped
    found = collect_summaries(tmp_path)
    assert list(found) == ["rtb", "trust-pcl"]
    (partial,) = found["trust-pcl"]
    assert partial["partial"] and partial["updates"] == 250 and partial["seed"] == 1
    assert partial["tv"] == 0.4 and partial["updates_per_s"] == pytest.approx(5.0)
    assert partial["wrong_mode_mass"] == 0.1 and partial["loss"] == 3.0


def test_figures_are_written_for_samples_and_curves(tmp_path):
    gen = torch.Generator().manual_seed(0)
    panels = {"prior": torch.randn(50, 2, generator=gen), "rtb": torch.randn(50, 2, generator=gen)}
    assert plot_sample_panels(panels, tmp_path / "s.png").stat().st_size > 1000
    curve = {"update": [0.0, 10.0], "loss": [math.nan, 2.0], "tv": [0.5, 0.2], "elbo": [-30, -1]}
    path = plot_learning_curves({"rtb": [curve, curve]}, tmp_path / "c.png")
    assert path.stat().st_size > 1000


# -- what the figures show -----------------------------------------------------------------------
def _curves(seed: int, shift: float = 0.0) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(seed)
    updates = [0.0, 250.0, 500.0, 750.0]
    noise = (0.01 * torch.randn(4, generator=g)).tolist()
    return {
        "update": updates,
        "loss": [math.nan, 3.0, 2.0, 1.0],
        "log_z": [-8.0, -6.0, -4.0, -2.0],
        "tv": [0.6 + shift + n for n in noise[:1]] + [0.3 + shift, 0.2 + shift, 0.1 + shift],
        "wrong_mode_mass": [0.6, 0.1, 0.05, 0.01],
        "elbo": [-33.0, -1.0, -0.8, -0.5],
        "w2": [5.0, 3.0, 2.0, 1.5],
    }


def _axes(fig, gid):
    (ax,) = [a for a in fig.axes if a.get_gid() == gid]
    return ax


def test_both_equivalent_curves_stay_visible_and_their_difference_has_a_panel():
    from zarrl.engine.experiments.gmm_posterior.reporting import (
        METHOD_STYLES,
        learning_curves_figure,
    )

    curves = {
        "rtb": [_curves(s) for s in range(3)],
        "trust-pcl-equivalent": [_curves(s, shift=0.02) for s in range(3)],
    }
    fig = learning_curves_figure(curves)
    try:
        tv = _axes(fig, "curve:tv")
        lines = {ln.get_label(): ln for ln in tv.get_lines()}
        rtb, tpcl = lines["rtb"], lines["trust-pcl-equivalent"]
        # under one another yet both visible: the wide line below, the dashed marked one on top
        assert rtb.get_linewidth() > 2 * tpcl.get_linewidth()
        assert rtb.get_zorder() < tpcl.get_zorder() and tpcl.get_linestyle() != "-"
        assert tpcl.get_marker() not in (None, "None", "")
        assert METHOD_STYLES["rtb"]["color"] != METHOD_STYLES["trust-pcl-equivalent"]["color"]
        # mean over seeds, with a band over seeds (one filled area per method)
        want = torch.tensor([_curves(s)["tv"] for s in range(3)]).mean(0)
        torch.testing.assert_close(torch.as_tensor(rtb.get_ydata()), want.double())
        assert len(tv.collections) == 2
        # the Δ panel under the metric: rtb − trust-pcl-equivalent of the seed means
        diff = _axes(fig, "difference:tv")
        (delta,) = [ln for ln in diff.get_lines() if ln.get_color() == "black"]
        np.testing.assert_allclose(delta.get_ydata(), -0.02, atol=1e-12)
        assert "rtb − trust-pcl-equivalent" in diff.get_title(loc="left")
        legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "rtb (3 seeds)" in legend_text and "trust-pcl-equivalent (3 seeds)" in legend_text
    finally:
        plt.close(fig)


def test_a_short_run_says_why_a_panel_is_empty_and_marks_a_cut_elbo_axis():
    from zarrl.engine.experiments.gmm_posterior.reporting import learning_curves_figure

    only_first = {k: v[:1] for k, v in _curves(0).items()}
    fig = learning_curves_figure({"kl-reinforce-off-policy": [only_first]})
    try:
        loss = _axes(fig, "curve:loss")
        assert not loss.get_lines()
        assert any("no training loss logged" in t.get_text() for t in loss.texts)
        assert not [a for a in fig.axes if (a.get_gid() or "").startswith("difference:")]
    finally:
        plt.close(fig)
    fig = learning_curves_figure({"rtb": [_curves(0), _curves(1)]})
    try:
        elbo = _axes(fig, "curve:elbo")
        bottom, _ = elbo.get_ylim()
        assert bottom > -33.0  # the prior's −33 no longer flattens the rest
        assert any("y axis cut" in t.get_text() for t in elbo.texts)
        markers = [ln for ln in elbo.get_lines() if ln.get_marker() == "v"]
        assert markers and markers[0].get_xdata()[0] == 0.0
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="band must be one of"):
        learning_curves_figure({"rtb": [_curves(0)]}, band="iqr")


def test_sample_panels_have_a_marker_legend_axis_labels_and_count_what_is_off_view():
    from zarrl.engine.experiments.gmm_posterior.reporting import sample_panels_figure

    x = torch.zeros(10, 2)
    x[0] = torch.tensor([30.0, 0.0])  # outside the ±14 view
    fig = sample_panels_figure({"prior": x, "rtb": torch.zeros(5, 2)})
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel()
        assert "10 samples, 1 outside the view" in ax.get_title()
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len(labels) == 3 and any("prior" in s for s in labels)
        assert any("target" in s for s in labels)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"not \[N, 2\]"):
        sample_panels_figure({"bad": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="empty"):
        sample_panels_figure({})
