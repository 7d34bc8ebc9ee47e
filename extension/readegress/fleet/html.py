"""The fleet report as one self-contained HTML file: inline SVG charts, inline CSS and JS.

Nothing is fetched when it opens (no external scripts, fonts or images), so it
can be mailed or opened offline. Charts are drawn here, as SVG, where a person
would rather look than read: detections on a timeline (one lane per host, dot
size and colour by priority), hosts per pair, bytes sent by the top egress
processes, and coverage (one cell per host, coloured by status). Tables follow
each chart; a small script filters the detections table and marks, on
``<body data-charts-drawn=N>``, how many charts have marks (the browser test
reads it).
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Optional

STATUS_COLOURS = {
    "ok": "#2e7d32", "warn": "#f9a825", "fail": "#c62828", "silent": "#757575",
    "no_events": "#6a1b9a",
}  # fmt: skip


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _when(t: Optional[float]) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _priority_colour(p: int, top: int) -> str:
    x = min(1.0, p / max(top, 1))
    r, g, b = int(255 * x), int(160 * (1 - x) + 40), int(60 * (1 - x) + 40)
    return f"#{r:02x}{g:02x}{b:02x}"


def timeline_svg(detections: list[dict[str, Any]]) -> str:
    dets = [d for d in detections if isinstance(d.get("egress_time"), (int, float))]
    hosts = sorted({str(d["host"]) for d in dets})
    width, lane, left = 960, 22, 230
    height = 40 + lane * max(1, len(hosts))
    parts = [
        f'<svg class="chart" data-chart="timeline" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Detections over time, one lane per host">'
    ]
    if not dets:
        parts.append('<text x="10" y="24">No detections.</text></svg>')
        return "".join(parts)
    t0 = min(d["egress_time"] for d in dets)
    t1 = max(d["egress_time"] for d in dets)
    span = max(t1 - t0, 1)
    top = max(int(d.get("priority") or 0) for d in dets)
    for i, h in enumerate(hosts):
        y = 20 + lane * i + lane / 2
        parts.append(
            f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" class="lbl">{_e(h)}</text>'
            f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" class="lane"/>'
        )
    for d in sorted(dets, key=lambda d: int(d.get("priority") or 0)):
        x = left + (width - left - 20) * (d["egress_time"] - t0) / span
        y = 20 + lane * hosts.index(str(d["host"])) + lane / 2
        p = int(d.get("priority") or 0)
        r = 3 + 6 * p / max(top, 1)
        parts.append(
            f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" '
            f'fill="{_priority_colour(p, top)}"><title>{_e(d["host"])} {_e(d.get("executable"))}'
            f" read {_e(d.get('path'))} then sent to {_e(d.get('remote_address'))}:"
            f"{_e(d.get('remote_port'))} at {_when(d['egress_time'])}, priority {p}"
            "</title></circle>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 4}" class="lbl">{_when(t0)}</text>'
        f'<text x="{width - 10}" y="{height - 4}" text-anchor="end" class="lbl">{_when(t1)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(name: str, label: str, items: list[tuple[str, float, str]], unit: str) -> str:
    """Horizontal bars: (label, value, tooltip)."""
    width, bar, left = 960, 20, 420
    height = 10 + bar * max(1, len(items))
    parts = [
        f'<svg class="chart" data-chart="{_e(name)}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{_e(label)}">'
    ]
    if not items:
        parts.append('<text x="10" y="20">Nothing to show.</text></svg>')
        return "".join(parts)
    top = max(v for _, v, _ in items) or 1
    for i, (text, value, tip) in enumerate(items):
        y = 5 + bar * i
        w = max(1.0, (width - left - 90) * value / top)
        parts.append(
            f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" class="lbl">'
            f"{_e(text[:64])}</text>"
            f'<rect class="mark" x="{left}" y="{y + 2}" width="{w:.1f}" height="{bar - 5}" '
            f'fill="#1565c0"><title>{_e(tip)}</title></rect>'
            f'<text x="{left + w + 6:.1f}" y="{y + 14}" class="lbl">'
            f"{_e(_num(value))}{_e(unit)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def coverage_svg(coverage: list[dict[str, Any]]) -> str:
    cols, cell = 6, 160
    rows = max(1, (len(coverage) + cols - 1) // cols)
    width, height = cols * cell, rows * 46 + 8
    parts = [
        f'<svg class="chart" data-chart="coverage" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Coverage per host">'
    ]
    for i, c in enumerate(coverage):
        x, y = (i % cols) * cell + 4, (i // cols) * 46 + 4
        status = str(c.get("status") or "ok")
        colour = STATUS_COLOURS.get(status.split(",")[0], "#757575")
        tip = "; ".join(f"{k.get('name')}: {k.get('status')} {k.get('detail') or ''}" for k in
                        c.get("checks") or [])  # fmt: skip
        parts.append(
            f'<rect class="mark" x="{x}" y="{y}" width="{cell - 8}" height="40" rx="4" '
            f'fill="{colour}"><title>{_e(c["host"])}: {_e(status)} {_e(tip)}</title></rect>'
            f'<text x="{x + 6}" y="{y + 17}" class="cell">{_e(str(c["host"])[:22])}</text>'
            f'<text x="{x + 6}" y="{y + 33}" class="cell">{_e(status)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _num(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:g}"


def _table(cols: list[tuple[str, str]], rows: list[dict[str, Any]], tid: str = "") -> str:
    head = "".join(f"<th>{_e(title)}</th>" for _, title in cols)
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if k.endswith(("_time", "_seen")) and isinstance(v, (int, float)):
                v = _when(v)
            elif isinstance(v, (list, dict)):
                v = json.dumps(v)
            cells.append(f"<td>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{_e(tid)}"' if tid else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1b1b1b}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}
.lbl{font-size:11px;fill:#333}.cell{font-size:11px;fill:#fff}
.lane{stroke:#e5e5e5}.summary span{display:inline-block;margin-right:18px}
svg.chart{border:1px solid #eee;background:#fff;margin:6px 0}
input{padding:4px;width:320px}
"""

_JS = """
(function(){
  var drawn = 0;
  document.querySelectorAll('svg.chart').forEach(function(s){
    if (s.querySelector('.mark')) { drawn++; }
  });
  document.body.setAttribute('data-charts-drawn', String(drawn));
  var box = document.getElementById('filter');
  var table = document.getElementById('detections');
  if (box && table) {
    box.addEventListener('input', function(){
      var q = box.value.toLowerCase();
      table.querySelectorAll('tbody tr').forEach(function(tr){
        tr.style.display = tr.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
      });
    });
  }
})();
"""


def render(report: dict[str, Any], *, title: str = "readegress fleet report") -> str:
    s = report.get("summary", {})
    dets = report.get("detections", [])
    prevalence = report.get("prevalence", [])
    # Pairs that alerted (reader's image the sender's), most hosts first: the
    # common jobs a baseline would approve, and the rare ones it keeps.
    alerting = sorted(
        (p for p in prevalence if p.get("approvable_hosts")),
        key=lambda p: (-int(p["approvable_hosts"]), p["executable"], p["destination"]),
    )
    pairs = [
        (
            f"{p['executable'].rsplit('/', 1)[-1]} {p['sensitive_class']} → "
            f"{p['destination']}:{p['port']}",
            float(p["approvable_hosts"]),
            f"alerted on {p['approvable_hosts']} hosts "
            f"({p['hosts']} with any candidate): {', '.join(p.get('host_names', [])[:10])}",
        )
        for p in alerting[:15]
    ]
    talkers = [
        (
            f"{t['host'].split('.')[0]} {t.get('executable')}",
            float(t["total_bytes_sent"]),
            f"pid {t.get('pid')}, {t.get('outbound_sockets')} outbound sockets",
        )
        for t in report.get("top_egress", [])[:15]
    ]
    summary = "".join(
        f"<span><b>{_e(k)}</b> {_e(v)}</span>"
        for k, v in s.items()
        if not isinstance(v, (dict, list))
    )
    det_cols = [
        ("priority", "priority"), ("score", "score"), ("host", "host"),
        ("executable", "executable"), ("path", "read"), ("sensitive_class", "class"),
        ("remote_address", "destination"), ("remote_port", "port"), ("scope", "scope"),
        ("prevalence_hosts", "pair hosts"), ("destination_hosts", "dest hosts"),
        ("egress_time", "egress time"), ("reasons", "reasons"), ("origin", "from"),
        ("id", "id"),
    ]  # fmt: skip
    shown = dets[:100]
    more = (
        f"<p>{len(dets) - len(shown)} more detections in report.json.</p>"
        if len(dets) > len(shown)
        else ""
    )
    prevalence_cols = [
        ("hosts", "hosts"), ("approvable_hosts", "alerting hosts"),
        ("executable", "executable"), ("sensitive_class", "class"),
        ("destination", "destination"), ("port", "port"), ("first_seen", "first seen"),
        ("last_seen", "last seen"),
    ]  # fmt: skip
    coverage_cols = [
        ("host", "host"), ("status", "status"), ("checks", "failing checks"),
        ("last_seen", "last seen"), ("silent_seconds", "silent (s)"),
        ("event_rows", "event rows"),
    ]  # fmt: skip
    socket_cols = [
        ("host", "host"), ("pid", "pid"), ("remote_address", "destination"),
        ("remote_port", "port"), ("age_seconds", "age (s)"), ("bytes_sent", "bytes sent"),
    ]  # fmt: skip
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<div class="summary">{summary}</div>',
        # Charts first: what a person looks at before reading tables.
        "<h2>Detections over time (one lane per host; size and colour: priority)</h2>",
        timeline_svg(dets),
        "<h2>Hosts per alerting pair (executable, class, destination network, port)</h2>",
        bars_svg("pairs", "Hosts per pair", pairs, " hosts"),
        "<h2>Bytes sent by the top egress processes</h2>",
        bars_svg("bytes", "Bytes sent by process", talkers, "B"),
        "<h2>Coverage</h2>",
        coverage_svg(report.get("coverage", [])),
        "<h2>Detections, highest priority first</h2>",
        '<input id="filter" placeholder="filter detections (host, path, address...)">',
        _table(det_cols, shown, "detections"),
        more,
        "<h2>Pairs across hosts</h2>",
        _table(prevalence_cols, prevalence[:200]),
        "<h2>Destinations only one host contacted</h2>",
        _table(
            [("destination", "destination"), ("host", "host"), ("first_seen", "first seen")],
            report.get("new_destinations", [])[:100],
        ),
        "<h2>Long-lived outbound sockets</h2>",
        _table(socket_cols, report.get("long_lived_sockets", [])),
        "<h2>Coverage per host</h2>",
        _table(coverage_cols, report.get("coverage", [])),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + f"<script>{_JS}</script></body></html>\n"
    )
