"""The report page's two drawings, as inline SVG strings (no script, no external reference): the
lineage graph (parents → merge step → version) and a horizontal bar chart with thresholds drawn.

Every string that reaches the SVG goes through ``_e`` (html.escape): references and licences come
from users' files. SVG text does not wrap, so long labels are clipped and given whole in ``<title>``
(the browser's tooltip).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from registry.lineage import LineageRecord
from registry.lineage_tree import _num as num

_BOX_H, _GAP, _PAD = 86, 14, 12  # parent box height and spacing, px in the viewBox
_PARENT_X, _PARENT_W = 8, 330
_STEP_X, _STEP_W = 400, 210
_VERSION_X, _VERSION_W = 672, 280
_WIDTH = _VERSION_X + _VERSION_W + 8


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _box(x: int, y: int, w: int, h: int, lines: list[str], tooltip: str, css: str) -> str:
    """A rounded box with ``lines`` (the first bold) and the whole story as its tooltip."""
    text = "".join(f'<text x="{x + _PAD}" y="{y + 22 + 17 * i}" class="{"t1" if i == 0 else "t2"}">'
                   f"{_e(line)}</text>" for i, line in enumerate(lines))
    return (f'<g class="node {css}"><title>{_e(tooltip)}</title>'
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8"/>{text}</g>')


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    mid = (x1 + x2) / 2
    return (f'<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" '
            'marker-end="url(#lineage-arrow)"/>')


def lineage_graph(record: LineageRecord, *, title: str, aliases: tuple[str, ...]) -> str:
    """``title`` is e.g. ``demo-merge v3``."""
    n = max(len(record.parents), 1)
    height = n * _BOX_H + (n - 1) * _GAP + 16
    parts, centre = [], height / 2
    for i, p in enumerate(record.parents):
        y = 8 + i * (_BOX_H + _GAP)
        origin = f"{p.repo_id}@{(p.commit or '')[:12]}" if p.repo_id else (
            f"revision {_clip(p.resolved_revision, 24)}" if p.resolved_revision else "local directory")
        tip = "\n".join([p.reference, f"content id {p.content_id}", f"path {p.path}"]
                        + ([f"Hugging Face {p.repo_id} commit {p.commit}"] if p.repo_id else [])
                        + [f"licence {p.license or 'unknown'}", f"audit {p.audit_verdict}"])
        css = "ok" if p.audit_verdict == "pass" else "bad"
        parts.append(_box(_PARENT_X, y, _PARENT_W, _BOX_H - 8,
                          [_clip(p.reference, 38), f"content {p.content_id[:16]}", _clip(origin, 42),
                           _clip(f"licence {p.license or 'unknown'} · audit {p.audit_verdict}", 42)], tip, css))
        parts.append(_arrow(_PARENT_X + _PARENT_W, y + (_BOX_H - 8) / 2, _STEP_X, centre))
    step_h, ver_h = 78, 96
    recipe = record.recipe
    parts.append(_box(_STEP_X, centre - step_h / 2, _STEP_W, step_h,
                      [f"merge: {_clip(recipe.method or 'unknown', 18)}", f"seed {record.seed}",
                       f"recipe {recipe.sha256[:16]}"],
                      f"method {recipe.method}\nseed {record.seed}\nrecipe sha256 {recipe.sha256}", "step"))
    parts.append(_arrow(_STEP_X + _STEP_W, centre, _VERSION_X, centre))
    licence = record.audit.effective_license or "unknown"
    parts.append(_box(_VERSION_X, centre - ver_h / 2, _VERSION_W, ver_h,
                      [_clip(title, 32), _clip(", ".join(aliases) or "no alias", 36),
                       f"content {record.merged.content_id[:16]}", _clip(f"licence {licence}", 36)],
                      f"{title}\ncontent id {record.merged.content_id}\nlicence {licence}", "version"))
    return (f'<svg class="lineage" viewBox="0 0 {_WIDTH} {height:.0f}" role="img" '
            f'aria-label="lineage graph of {_e(title)}">'
            '<defs><marker id="lineage-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
            + "".join(parts) + "</svg>")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None
    threshold: float | None = None  # drawn as a dashed line; None: no gate on this bar
    passed: bool | None = None  # the gate's verdict, colouring the bar


def bar_chart(title: str, bars: list[Bar]) -> str:
    """Horizontal bars on a 0..max(1, values) scale, each with its gate's threshold line."""
    label_w, bar_w, row_h, top = 150, 420, 30, 26
    scale = max([1.0] + [b.value for b in bars if b.value is not None]
                + [b.threshold for b in bars if b.threshold is not None])
    rows = []
    for i, b in enumerate(bars):
        y = top + i * row_h
        css = "none" if b.passed is None else ("pass" if b.passed else "fail")
        width = 0 if b.value is None else max(b.value, 0) / scale * bar_w
        tip = f"{b.label}: {num(b.value)}" + ("" if b.threshold is None else f", threshold {num(b.threshold)}")
        rows.append(f'<g class="bar {css}"><title>{_e(tip)}</title>'
                    f'<text x="{label_w - 8}" y="{y + 18}" class="lbl">{_e(_clip(b.label, 20))}</text>'
                    f'<rect x="{label_w}" y="{y + 5}" width="{width:.1f}" height="{row_h - 10}"/>'
                    f'<text x="{label_w + width + 6:.1f}" y="{y + 18}" class="val">{_e(num(b.value))}</text></g>')
        if b.threshold is not None:
            x = label_w + max(b.threshold, 0) / scale * bar_w
            rows.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{y + 1}" y2="{y + row_h - 1}">'
                        f"<title>threshold {_e(num(b.threshold))}</title></line>")
    axis_y = top + len(bars) * row_h + 4
    ticks = "".join(f'<text x="{label_w + f * bar_w:.1f}" y="{axis_y + 14}" class="tick">{scale * f:.2g}</text>'
                    for f in (0, 0.25, 0.5, 0.75, 1))
    return (f'<svg class="chart" viewBox="0 0 {label_w + bar_w + 60} {axis_y + 22}" role="img" '
            f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
            f'<text x="0" y="14" class="ctitle">{_e(title)}</text>'
            f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{top}" y2="{axis_y}"/>'
            + "".join(rows) + ticks + "</svg>")
