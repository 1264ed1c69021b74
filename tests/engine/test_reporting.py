"""The run's learning-curve figure: smoothing window, bands, run name; the rolling statistics."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from zarrl.engine.reporting import learning_curve_figure, plot_learning_curve, rolling_mean_std


def test_rolling_mean_std_is_the_trailing_window_statistic():
    x = [1.0, 3.0, 5.0, 7.0, 100.0]
    mean, std = rolling_mean_std(x, 2)
    np.testing.assert_allclose(mean, [1.0, 2.0, 4.0, 6.0, 53.5])
    np.testing.assert_allclose(std, [0.0, 1.0, 1.0, 1.0, 46.5])
    mean, std = rolling_mean_std(x, 10)  # a window longer than the series: the running mean
    np.testing.assert_allclose(mean, np.cumsum(x) / np.arange(1, 6))
    np.testing.assert_allclose(std[-1], np.std(x))
    with pytest.raises(ValueError, match="window must be >= 1"):
        rolling_mean_std(x, 0)


def _write(scalars, name, rows):
    path = scalars / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s},{v}\n" for s, v in rows))


def test_the_figure_names_the_run_states_the_window_and_draws_bands(tmp_path):
    scalars = tmp_path / "scalars"
    _write(scalars, "train/episode_return", [(i * 100, 10.0 + i) for i in range(30)])
    _write(scalars, "eval/return_mean", [(1000, 50.0), (2000, 120.0), (3000, 300.0)])
    _write(scalars, "eval/return_std", [(1000, 5.0), (2000, 10.0), (3000, 20.0)])
    fig = learning_curve_figure(scalars, "trust_pcl on CartPole-v1", 475.0, run_name="seed3")
    try:
        (ax,) = fig.axes
        assert ax.get_title().startswith("seed3: ")
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("trailing mean over 10 batches" in s for s in labels)
        assert any("±1 std over its episodes" in s for s in labels)
        assert len(ax.collections) == 2  # the training band and the evaluation band
        smooth = [ln for ln in ax.get_lines() if "trailing mean" in ln.get_label()][0]
        np.testing.assert_allclose(smooth.get_ydata()[-1], np.mean(10.0 + np.arange(20, 30)))
        (band_eval,) = [c for c in ax.collections if c.get_paths()[0].vertices[:, 1].max() > 300]
        assert band_eval.get_paths()[0].vertices[:, 1].max() == pytest.approx(320.0)
    finally:
        plt.close(fig)


def test_an_empty_run_says_so_and_still_writes_the_png(tmp_path):
    path = plot_learning_curve(tmp_path / "none", tmp_path / "c.png", "x", run_name="r")
    assert path.stat().st_size > 1000
    fig = learning_curve_figure(tmp_path / "none", "x")
    try:
        assert any("no episode finished" in t.get_text() for t in fig.axes[0].texts)
    finally:
        plt.close(fig)
