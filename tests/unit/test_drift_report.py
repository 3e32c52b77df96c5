"""The drift report: self-contained HTML, checked in a real headless Chromium (charts rendered, screenshot)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from browser_support import chromium, load_page, png_size  # noqa: E402

from mlops_operator.drift import report as drift_report  # noqa: E402
from mlops_operator import drift  # noqa: E402

# For every chart: its feature, its laid-out size and the drawn size of both distributions.
CHART_PROBE = """JSON.stringify(Array.from(document.querySelectorAll('svg.chart')).map(svg => {
  const box = svg.getBoundingClientRect();
  const drawn = cls => { const p = svg.querySelector('path.' + cls); if (!p) return 0;
                         const b = p.getBBox(); return b.width * b.height; };
  return {feature: svg.dataset.feature, width: box.width, height: box.height,
          reference: drawn('reference'), current: drawn('current')};
}))"""


def frames(features: int, rows: int, seed: int, shifted: tuple[str, ...] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(features):
        name = f"f{i:03d}"
        if i % 10 == 9:
            columns[name] = rng.choice(np.array(["red", "green", "blue", "<b>&amp;"], dtype=object), rows)
        else:
            columns[name] = rng.normal(1.5 if name in shifted else 0.0, 1.0, rows)
    return pd.DataFrame(columns)


def build(features: int, rows: int = 400, shifted: tuple[str, ...] = ("f001", "f009")) -> tuple[drift.DriftReport, str]:
    reference = drift.build_profile(frames(features, 2000, 1))
    current = frames(features, rows, 2, shifted)
    if features > 9:
        current["f009"] = "red"  # a categorical shift
    report = drift.compare(reference, current, {"psi": 0.2, "ks": 0.1, "chi2": 0.1}, histograms=True)
    context = drift_report.ReportContext(
        title="DriftMonitor default/iris", generated="2026-11-29T10:00:00Z", verdict=report.status,
        summary="2 features drifted", model_version="3", reference_uri="file:///models/iris/3/profile.json",
        reference_rows=2000, window_start="2026-11-29T09:55:00Z", window_end="2026-11-29T10:00:00Z",
        window_rows=rows, alpha=0.05, correction="bonferroni",
        performance={"metric": "accuracy", "live": 0.81, "training": 0.93, "samples": 120, "degraded": True},
        performance_history=[("2026-11-29T09:00:00Z", 0.92), ("2026-11-29T09:30:00Z", 0.9),
                             ("2026-11-29T10:00:00Z", 0.81)])
    return report, drift_report.render_report(report, context)


def test_report_has_every_feature_its_tests_and_the_facts() -> None:
    report, page = build(20)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page
    assert "https://" not in page, "nothing is fetched from the internet"
    assert page.count('<svg class="chart"') == 20
    for name in report.features:
        assert f'data-feature="{name}"' in page
    # The tests with score, threshold, p-values and alpha; window, reference and model version.
    assert "<th>score</th><th>threshold</th><th>p-value</th><th>adjusted p</th><th>alpha</th>" in page
    assert "file:///models/iris/3/profile.json (2000 rows)" in page and "400 rows" in page
    assert "2026-11-29T09:55:00Z to 2026-11-29T10:00:00Z" in page and "<dd>3</dd>" in page
    assert 'class="metric"' in page and "accuracy: live 0.81 vs training 0.93" in page
    # Drifted features come first; a category label is escaped.
    assert set(report.drifted_features) == {"f001", "f009"}
    first_sections = re.findall(r'<section class="feature" id="f\d+" data-feature="([^"]+)"', page)[:2]
    assert set(first_sections) == {"f001", "f009"}
    assert "<b>&amp;" not in page and "&lt;b&gt;&amp;amp;" in page


def test_insufficient_feature_says_why_and_still_draws() -> None:
    reference = drift.build_profile(frames(3, 2000, 1))
    report = drift.compare(reference, frames(3, 30, 2), histograms=True)
    page = drift_report.render_report(report, drift_report.ReportContext(
        title="t", generated="2026-11-29T10:00:00Z", verdict=report.status))
    assert report.status == drift.INSUFFICIENT_DATA
    assert "ks needs 50 non-missing values in the window and in the reference; the window has 30" in page
    assert page.count('<svg class="chart"') == 3


def test_500_feature_report_is_small() -> None:
    _, page = build(500)
    size = len(page.encode())
    assert size < 2_000_000, size


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    report, page = build(500)
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    with chromium() as endpoint:
        loaded = load_page(endpoint, path, CHART_PROBE)
    import json

    charts = json.loads(loaded.evaluated)
    assert [chart["feature"] for chart in charts] == sorted(
        report.features, key=lambda name: {"Drift": 0, "NoDrift": 1}.get(report.features[name].status, 2)
    ) or {chart["feature"] for chart in charts} == set(report.features)
    assert {chart["feature"] for chart in charts} == set(report.features)
    for chart in charts:
        assert chart["width"] >= drift_report.CHART_WIDTH - 1 and chart["height"] >= drift_report.CHART_HEIGHT - 1
        assert chart["reference"] > 0 and chart["current"] > 0, chart
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(loaded.screenshot)
    width, height = png_size(loaded.screenshot)
    assert width == 1280 and height > 500 * drift_report.CHART_HEIGHT, (width, height)
    assert len(loaded.screenshot) > 100_000  # hundreds of drawn charts, not a blank page
    print(f"500-feature report: {len(page.encode()) / 1e6:.2f} MB, load event after {loaded.load_seconds:.2f} s, "
          f"screenshot {width}x{height} at {screenshot}")
