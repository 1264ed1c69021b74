"""The GMM experiment's report: mean ± std over seeds, markdown/CSV table, partial runs, figures."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from zarrl.engine.gmm_experiment import collect_summaries
from zarrl.engine.gmm_reporting import (
    aggregate_summaries,
    format_results_markdown,
    plot_learning_curves,
    plot_sample_panels,
    write_results,
)
from zarrl.engine.gmm_runner import CURVE_FIELDS


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
    running = tmp_path / "trust-pcl" / "seed1"
    running.mkdir(parents=True)
    with open(running / "curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        for update, tv in ((0, 0.6), (250, 0.4)):
            writer.writerow(
                {k: 0.0 for k in CURVE_FIELDS} | {"update": update, "tv": tv, "train_s": 50}
            )
    (tmp_path / "guidance" / "seed0").mkdir(parents=True)  # nothing written yet: skipped
    found = collect_summaries(tmp_path)
    assert list(found) == ["rtb", "trust-pcl"]
    (partial,) = found["trust-pcl"]
    assert partial["partial"] and partial["updates"] == 250 and partial["seed"] == 1
    assert partial["tv"] == 0.4 and partial["updates_per_s"] == pytest.approx(5.0)


def test_figures_are_written_for_samples_and_curves(tmp_path):
    gen = torch.Generator().manual_seed(0)
    panels = {"prior": torch.randn(50, 2, generator=gen), "rtb": torch.randn(50, 2, generator=gen)}
    assert plot_sample_panels(panels, tmp_path / "s.png").stat().st_size > 1000
    curve = {"update": [0.0, 10.0], "loss": [math.nan, 2.0], "tv": [0.5, 0.2], "elbo": [-30, -1]}
    path = plot_learning_curves({"rtb": [curve, curve]}, tmp_path / "c.png")
    assert path.stat().st_size > 1000
