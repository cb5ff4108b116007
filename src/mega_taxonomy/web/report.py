"""One self-contained HTML file about a stored taxonomy, for sharing: a sunburst and a treemap of
the top of the tree, the size histogram of every level, the imbalance table, and the largest
nodes with their nearest members. plotly's JS is embedded once; the file fetches nothing.
"""

from __future__ import annotations

import html
from pathlib import Path

from .view import ROOT, TaxonomyView

_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.15em .6em;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.grid{display:flex;flex-wrap:wrap;gap:1em}
h2{font-size:1.1em;margin-top:1.5em}"""


def _figures(view: TaxonomyView, depth: int, limit: int):
    import plotly.graph_objects as go

    piece = view.treemap(ROOT, depth, limit)
    trace = {"ids": piece["ids"], "parents": piece["parents"], "labels": piece["names"], "values": piece["values"],
             "branchvalues": "total", "hovertemplate": "%{label}<br>%{value} rows<extra></extra>"}
    layout = {"margin": {"t": 30, "l": 0, "r": 0, "b": 0}, "height": 600}
    sunburst = go.Figure(go.Sunburst(**trace), layout={**layout, "title": "Sizes (sunburst; click to zoom)"})
    treemap = go.Figure(go.Treemap(**trace), layout={**layout, "title": "Sizes (treemap; click to zoom)"})
    histograms = []
    for level in view.summary()["levels"]:
        h = level["histogram"]
        names = ["0" if lo == 0 else f"{lo:,}-{hi - 1:,}" for lo, hi in zip(h["edges"][:-1], h["edges"][1:])]
        histograms.append(go.Figure(go.Bar(x=names, y=h["counts"], marker_color="#7ea6d8"), layout={
            "title": f"level {level['level']}: nodes by size", "height": 300, "width": 480,
            "margin": {"t": 40, "l": 40, "r": 10, "b": 70}, "xaxis_title": "rows in node", "yaxis_title": "nodes"}))
    return [sunburst, treemap], histograms


def _imbalance_table(view: TaxonomyView) -> str:
    rows = []
    for level in view.summary()["levels"]:
        im = level["imbalance"]
        cells = [level["level"], f"{level['nodes']:,}", f"{im['min']:,}", f"{im['median']:,.0f}", f"{im['max']:,}",
                 f"{im['max_over_mean']:.2f}", f"{im['entropy']:.3f}", f"{im['gini']:.3f}"]
        rows.append("<tr>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("level", "nodes", "min", "median", "max", "max/mean", "entropy", "gini"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _largest_nodes(view: TaxonomyView, n_nodes: int, n_members: int) -> str:
    rows = []
    for child in view.children(ROOT, 0, n_nodes)["children"]:
        members = view.members(child["key"], n_members)["members"]
        words = ", ".join(html.escape(str(m["label"] if m["label"] is not None else m["id"])) for m in members)
        rows.append(f'<tr><td>{child["key"]}</td><td class="num">{child["size"]:,}</td>'
                    f'<td class="num">{child["n_children"]}</td><td>{words}</td></tr>')
    return ("<table><tr><th>node</th><th>rows</th><th>children</th><th>nearest members</th></tr>"
            + "".join(rows) + "</table>")


def write_report(view: TaxonomyView, path, *, depth: int = 2, limit: int = 40, n_nodes: int = 30,
                 n_members: int = 10) -> Path:
    """Write the report of ``view`` to ``path`` (one HTML file, plotly embedded); return the path.

    ``depth`` levels of the tree are drawn, each node with up to ``limit`` largest children (the
    rest as one "+N more" box); the ``n_nodes`` largest top-level nodes are listed with their
    ``n_members`` nearest members.
    """
    charts, histograms = _figures(view, depth, limit)
    parts, first = [], True
    for fig in charts + histograms:
        # The first figure carries plotly's JS (about 4.6 MB), the others refer to it.
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
        first = False
    s = view.summary()
    title = f"Taxonomy report: {html.escape(s['uri'])}"
    nodes = " x ".join(f"{lv['nodes']:,}" for lv in s["levels"])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head><body>
<h1>{title}</h1>
<p>{s['rows']:,} rows, {nodes} nodes, metric {html.escape(str(s['metric']))}; parameters:
{html.escape(", ".join(f"{k}={v}" for k, v in s["params"].items()))}</p>
<h2>Sizes</h2><div class="grid">{parts[0]}{parts[1]}</div>
<h2>Imbalance per level</h2>{_imbalance_table(view)}
<h2>Nodes by size, per level</h2><div class="grid">{''.join(parts[2:])}</div>
<h2>Largest top-level nodes</h2>{_largest_nodes(view, n_nodes, n_members)}
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
