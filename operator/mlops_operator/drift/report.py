"""A drift report people can look at: one self-contained HTML page (inline CSS and SVG, no script).

Per feature: the reference and current distributions drawn over each other (an inline SVG
histogram, proportions per bin or category), every test with its score and threshold, its p-value,
adjusted p-value, alpha and how the p-value was obtained, and the sample sizes. At the top: the
verdict, the window (times, rows), the reference and the model version compared, and - for concept
drift - the live metric over time. Pure: values in, a string out; writing it is the caller's job.

Size: about 2 KB per feature (one ``<path>`` per distribution, coordinates rounded), so a 500-feature
report stays near 1 MB (tested, and timed in ``benchmarks/drift_report_bench.py``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CHART_WIDTH = 360
CHART_HEIGHT = 120
_PAD_LEFT, _PAD_BOTTOM, _PAD_TOP = 4, 16, 6
REFERENCE_COLOUR = "#8c8c8c"
CURRENT_COLOUR = "#1f6fd1"
DRIFT_COLOUR = "#c62828"


@dataclass(frozen=True)
class ReportContext:
    """What the report says about where the numbers come from."""

    title: str
    """E.g. ``DriftMonitor default/iris``."""
    generated: str
    """RFC 3339 time of the check."""
    verdict: str
    """The check's phase (Drift, NoDrift, InsufficientData)."""
    summary: str = ""
    model_version: str | None = None
    reference_uri: str | None = None
    reference_rows: int | None = None
    window_start: str | None = None
    window_end: str | None = None
    window_rows: int | None = None
    alpha: float | None = None
    correction: str | None = None
    performance: Mapping[str, Any] | None = None
    """status.performance of the check (metric, live, training, samples, degraded, message)."""
    performance_history: Sequence[tuple[str, float]] = field(default_factory=tuple)
    """(time, live metric) of earlier checks and this one, oldest first."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """More header lines (label -> text), e.g. the label-free performance estimate."""


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{max(digits - 2, 1)}e}"
    return f"{value:.{digits}g}"


def _step_path(values: Sequence[float], top: float, width: float, height: float) -> str:
    """A closed step outline of a histogram (bars of equal width), in chart coordinates."""
    count = len(values)
    if count == 0 or top <= 0:
        return ""
    step = width / count
    base = _PAD_TOP + height
    points = [f"M{_PAD_LEFT},{base:.0f}"]
    for index, value in enumerate(values):
        y = base - height * (value / top)
        x0 = _PAD_LEFT + index * step
        points.append(f"V{y:.1f}H{x0 + step:.1f}")
    points.append(f"V{base:.0f}Z")
    return "".join(points)


def feature_chart(name: str, histogram: Any, drifted: bool) -> str:
    """Inline SVG: reference (grey, filled) and current (blue, outlined) proportions per bin."""
    reference = [float(v) for v in histogram.reference]
    current = [float(v) for v in histogram.current]
    top = max(reference + current + [1e-12])
    width = CHART_WIDTH - 2 * _PAD_LEFT
    height = CHART_HEIGHT - _PAD_BOTTOM - _PAD_TOP
    if histogram.kind == "numeric":
        low, high = _number(histogram.edges[0], 3), _number(histogram.edges[-1], 3)
        axis = (f'<text x="{_PAD_LEFT}" y="{CHART_HEIGHT - 3}">{_text(low)}</text>'
                f'<text x="{CHART_WIDTH - _PAD_LEFT}" y="{CHART_HEIGHT - 3}" text-anchor="end">{_text(high)}</text>')
    else:
        labels = list(histogram.labels)
        shown = ", ".join(labels[:6]) + (" ..." if len(labels) > 6 else "")
        axis = f'<text x="{_PAD_LEFT}" y="{CHART_HEIGHT - 3}">{_text(shown[:60])}</text>'
    border = DRIFT_COLOUR if drifted else "#ddd"
    return (
        f'<svg class="chart" data-feature="{_text(name)}" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="{_text(name)}: reference and current">'
        f'<rect class="frame" x="0.5" y="0.5" width="{CHART_WIDTH - 1}" height="{CHART_HEIGHT - 1}" fill="none" '
        f'stroke="{border}"/>'
        f'<path class="reference" d="{_step_path(reference, top, width, height)}" fill="{REFERENCE_COLOUR}" '
        f'fill-opacity="0.45" stroke="none"/>'
        f'<path class="current" d="{_step_path(current, top, width, height)}" fill="{CURRENT_COLOUR}" '
        f'fill-opacity="0.15" stroke="{CURRENT_COLOUR}" stroke-width="1.5"/>'
        f'{axis}</svg>'
    )


def _tests_table(feature: Any) -> str:
    rows = []
    for name, result in feature.tests.items():
        status = getattr(result, "status", None) or ("Drift" if result.drifted else "NoDrift")
        message = getattr(result, "message", "") or ""
        rows.append(
            f'<tr class="{"drift" if result.drifted else ""}"><td>{_text(name)}</td>'
            f"<td>{_number(result.score)}</td><td>{_number(result.threshold)}</td>"
            f"<td>{_number(result.p_value)}</td><td>{_number(result.adjusted_p_value)}</td>"
            f"<td>{_number(getattr(result, 'alpha', None))}</td><td>{_text(getattr(result, 'method', '') or '')}</td>"
            f"<td>{_text(status)}{(' - ' + _text(message)) if message else ''}</td></tr>"
        )
    if not rows:
        return ""
    return ("<table class=\"tests\"><tr><th>test</th><th>score</th><th>threshold</th><th>p-value</th>"
            "<th>adjusted p</th><th>alpha</th><th>p from</th><th>verdict</th></tr>" + "".join(rows) + "</table>")


def _feature_section(index: int, feature: Any) -> str:
    histogram = getattr(feature, "histogram", None)
    chart = (feature_chart(feature.name, histogram, feature.drifted) if histogram is not None
             else '<p class="nochart">no distribution to draw (no values)</p>')
    verdict_class = {"Drift": "drift", "NoDrift": "ok"}.get(feature.status, "insufficient")
    message = getattr(feature, "message", "") or ""
    return (
        f'<section class="feature" id="f{index}" data-feature="{_text(feature.name)}">'
        f'<h3>{_text(feature.name)} <span class="badge {verdict_class}">{_text(feature.status)}</span>'
        f' <small>{_text(feature.kind)}; window {feature.sample_size} values ({feature.missing} missing); '
        f'reference {feature.reference_size}</small></h3>'
        f'{("<p>" + _text(message) + "</p>") if message else ""}'
        f'<div class="body">{chart}{_tests_table(feature)}</div></section>'
    )


def _metric_chart(history: Sequence[tuple[str, float]], training: float | None) -> str:
    """Inline SVG line of the live metric over checks, with the training value as a dashed line."""
    values = [float(v) for _, v in history if v is not None and math.isfinite(float(v))]
    if not values:
        return ""
    width, height = 560, 140
    low = min(values + ([training] if training is not None else []))
    high = max(values + ([training] if training is not None else []))
    span = (high - low) or 1.0
    low, high = low - 0.1 * span, high + 0.1 * span

    def y(value: float) -> float:
        return 8 + (height - 24) * (1 - (value - low) / (high - low))

    step = (width - 20) / max(len(values) - 1, 1)
    points = " ".join(f"{10 + i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    baseline = ""
    if training is not None:
        baseline = (f'<line x1="10" x2="{width - 10}" y1="{y(training):.1f}" y2="{y(training):.1f}" '
                    f'stroke="{REFERENCE_COLOUR}" stroke-dasharray="4 3"/>')
    first, last = history[0][0], history[-1][0]
    return (f'<svg class="metric" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="live metric over time">{baseline}'
            f'<polyline points="{points}" fill="none" stroke="{CURRENT_COLOUR}" stroke-width="2"/>'
            f'<text x="10" y="{height - 3}">{_text(first)}</text>'
            f'<text x="{width - 10}" y="{height - 3}" text-anchor="end">{_text(last)}</text>'
            f'<text x="12" y="14">{_number(high, 3)}</text><text x="12" y="{height - 18}">{_number(low, 3)}</text></svg>')


_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:18px 0 6px}h3{font-size:14px;margin:0 0 4px}
small{color:#666;font-weight:normal}
.badge{padding:1px 6px;border-radius:3px;color:#fff;font-size:12px}
.drift{background:#c62828}.ok{background:#2e7d32}.insufficient{background:#777}
tr.drift td{background:#fdecea}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0}dt{color:#666}dd{margin:0}
.feature{border-top:1px solid #eee;padding:8px 0;content-visibility:auto;contain-intrinsic-size:auto 180px}
.body{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
svg text{font-size:10px;fill:#555}
.legend span{display:inline-block;width:12px;height:8px;margin:0 4px 0 10px}
"""


def render_report(report: Any, context: ReportContext) -> str:
    """The HTML page of one check. ``report`` is the engine's DriftReport (features with histograms)."""
    features = list(report.features.values())
    order = sorted(range(len(features)), key=lambda i: {"Drift": 0, "NoDrift": 1}.get(features[i].status, 2))
    drifted = sum(1 for f in features if f.status == "Drift")
    evaluated = sum(1 for f in features if f.status != "InsufficientData")
    verdict_class = {"Drift": "drift", "NoDrift": "ok"}.get(context.verdict, "insufficient")
    facts = [
        ("checked", context.generated),
        ("model version", context.model_version or "-"),
        ("reference", f"{context.reference_uri or '-'} ({context.reference_rows if context.reference_rows is not None else '?'} rows)"),
        ("window", f"{context.window_rows if context.window_rows is not None else report.sample_size} rows, "
                   f"{context.window_start or '?'} to {context.window_end or '?'}"),
        ("features", f"{drifted} drifted of {evaluated} with a verdict ({len(features)} checked)"),
        ("significance", f"alpha {_number(context.alpha)}, correction {context.correction or report.correction}; a "
                         "test flags drift when its score exceeds its threshold and its adjusted p-value is below alpha"),
    ]
    facts.extend(context.extra.items())
    header = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts)
    performance = ""
    if context.performance:
        p = context.performance
        line = (f"{_text(p.get('metric', 'metric'))}: live {_number(p.get('live'))} vs training "
                f"{_number(p.get('training'))} on {_text(p.get('samples', 0))} labelled requests"
                f"{' - degraded' if p.get('degraded') else ''}{(' - ' + _text(p['message'])) if p.get('message') else ''}")
        performance = (f'<h2>Concept drift</h2><p>{line}</p>'
                       f'{_metric_chart(list(context.performance_history), p.get("training"))}')
    index = "".join(
        f'<tr class="{"drift" if features[i].status == "Drift" else ""}"><td><a href="#f{i}">{_text(features[i].name)}</a>'
        f"</td><td>{_text(features[i].status)}</td><td>{_text(_strongest(features[i]))}</td></tr>"
        for i in order
    )
    sections = "".join(_feature_section(i, features[i]) for i in order)
    legend = (f'<p class="legend">bars: share of rows per bin or category '
              f'<span style="background:{REFERENCE_COLOUR}"></span>reference '
              f'<span style="background:{CURRENT_COLOUR}"></span>current window</p>')
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_text(context.title)}: {_text(context.verdict)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{_text(context.title)} <span class="badge {verdict_class}">{_text(context.verdict)}</span></h1>'
        f"<p>{_text(context.summary)}</p><dl>{header}</dl>{performance}"
        f"<h2>Features</h2><table class=\"index\"><tr><th>feature</th><th>verdict</th><th>strongest test</th></tr>"
        f"{index}</table>{legend}{sections}</body></html>"
    )


def _strongest(feature: Any) -> str:
    """The test with the smallest adjusted p-value, as 'name score (p)'."""
    best = None
    for name, result in feature.tests.items():
        p = result.adjusted_p_value if result.adjusted_p_value is not None else result.p_value
        if p is None:
            continue
        if best is None or p < best[1]:
            best = (name, p, result.score)
    if best is None:
        return getattr(feature, "message", "") or "-"
    return f"{best[0]} {_number(best[2], 3)} (p {_number(best[1], 2)})"
