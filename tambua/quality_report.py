"""The data-quality report as a page for people: one self-contained HTML file (plots as PNG
inside it, drawn with matplotlib) from the JSON ``tambua quality-report`` prints. Owns
presentation only; every number on the page is a value of that JSON, and each says which
(``data-json``: its path in the JSON), so a test can hold the two side by side.
Never images, templates, embeddings or subject ids: the report holds none.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

MODALITIES = ("face", "finger", "iris")
_GROUP_TITLES = {"site": "By site", "partition": "By partition", "operator": "By operator (who enrolled)",
                 "day": "By day of enrolment (UTC)"}
_CSS = ("body{font:14px/1.45 sans-serif;margin:2em;max-width:72em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}h2{margin-top:1.6em}"
        ".note{color:#555;max-width:60em}img{max-width:100%;border:1px solid #eee}.late{color:#b00;font-weight:bold}")


def _fmt(value, percent: bool = False) -> str:
    """How the page writes a JSON value (the test reads it back the same way)."""
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.2f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return html.escape(str(value))


def _cell(report: dict, path: str, percent: bool = False) -> str:
    value = report
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value.get(part) if value is not None else None
    return f'<td data-json="{html.escape(path)}"{" data-percent" if percent else ""}>{_fmt(value, percent)}</td>'


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    mods = report["modalities"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=False)
    for ax, m in zip(axes, MODALITIES):
        counts = mods[m]["quality"]["histogram"]
        ax.bar([f"{10 * i}" for i in range(len(counts))], counts, color="#4a7ab5")
        ax.set_title(f"{m}: {mods[m]['samples']:,} samples")
        ax.set_xlabel("quality score (from)")
    axes[0].set_ylabel("samples")
    out["quality"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    labels, values = [], []
    for m in MODALITIES:
        for reason, n in mods[m]["refusal_reasons"].items():
            labels.append(f"{m}: {reason}")
            values.append(n)
    if values:
        ax.barh(labels[::-1], values[::-1], color="#c0504d")
        ax.set_xlabel("captures refused")
    else:
        ax.text(0.5, 0.5, "no capture was refused", ha="center", va="center")
        ax.set_axis_off()
    out["refusals"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    days = report["groups"]["day"]
    bottom = [0] * len(days)
    for m, colour in zip(MODALITIES, ("#4a7ab5", "#9bbb59", "#8064a2")):
        values = [d["samples"][m] for d in days]
        ax.bar([d["key"] for d in days], values, bottom=bottom, label=m, color=colour)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("samples enrolled")
    ax.legend()
    ax.tick_params(axis="x", rotation=45)
    out["days"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    counts = sorted((int(k), n) for k, n in report["missing"]["finger_counts"].items())  # JSON keys sort as text
    ax.bar([k for k, _ in counts], [n for _, n in counts], color="#9bbb59")
    ax.set_xticks(range(11))
    ax.set_xlabel("fingers enrolled per subject")
    ax.set_ylabel("subjects")
    out["fingers"] = _png(fig)
    plt.close(fig)
    return out


def _modality_section(report: dict, m: str) -> str:
    d = report["modalities"][m]
    p = f"modalities.{m}"
    rows = [f"<tr><th>quality score</th>{''.join(_cell(report, f'{p}.quality.{k}') for k in ('n', 'mean', 'p10', 'p50', 'p90'))}</tr>"]
    for name in d["components"]:
        rows.append(f"<tr><th>{html.escape(name)}</th>"
                    + "".join(_cell(report, f"{p}.components.{name}.{k}") for k in ("n", "mean", "p10", "p50", "p90"))
                    + "</tr>")
    reasons = "".join(f"<tr><td>{html.escape(r)}</td>{_cell(report, f'{p}.refusal_reasons.{r}')}</tr>"
                      for r in d["refusal_reasons"]) or '<tr><td colspan="2">none</td></tr>'
    dpi = "".join(f"<tr><td>{html.escape(k)}</td>{_cell(report, f'{p}.dpi.{k}')}</tr>" for k in d["dpi"])
    return (f'<h3 id="modality-{m}">{m.capitalize()}</h3>'
            f"<table><tr><th></th><th>samples</th><th>mean</th><th>10th pct</th><th>median</th><th>90th pct</th></tr>"
            f"{''.join(rows)}</table>"
            f"<table><tr><th>image width (px)</th>{_cell(report, f'{p}.image_sizes.width.p50')}"
            f"<th>height (px)</th>{_cell(report, f'{p}.image_sizes.height.p50')}"
            f"<th>smallest width</th>{_cell(report, f'{p}.image_sizes.width.min')}"
            f"<th>size unknown</th>{_cell(report, f'{p}.image_sizes.unknown')}</tr></table>"
            f"<table><tr><th>resolution (dpi)</th><th>samples</th></tr>{dpi}</table>"
            f"<table><tr><th>why captures were refused</th><th>captures</th></tr>{reasons}</table>")


def _group_table(report: dict, group: str) -> str:
    head = "".join(f"<th>{m} samples</th><th>{m} mean quality</th><th>{m} refused</th>" for m in MODALITIES)
    rows = []
    for i, row in enumerate(report["groups"][group]):
        p = f"groups.{group}.{i}"
        cells = "".join(_cell(report, f"{p}.samples.{m}") + _cell(report, f"{p}.mean_quality.{m}")
                        + _cell(report, f"{p}.refusal_rate.{m}", percent=True) for m in MODALITIES)
        rows.append(f"<tr><td>{html.escape(row['key'])}</td>{_cell(report, p + '.subjects')}{cells}</tr>")
    body = "".join(rows) or f'<tr><td colspan="{2 + 3 * len(MODALITIES)}">nothing enrolled</td></tr>'
    return (f'<h3 id="group-{group}">{_GROUP_TITLES[group]}</h3><table><tr><th>{group}</th><th>subjects</th>{head}'
            f"</tr>{body}</table>")


def render(report: dict) -> str:
    """The page (HTML text) for a report."""
    plots = _plots(report)
    totals = "".join(f"<tr><td>{m}</td>{_cell(report, f'totals.samples.{m}')}{_cell(report, f'totals.refused.{m}')}"
                     f"{_cell(report, f'modalities.{m}.refusal_rate', percent=True)}"
                     f"{_cell(report, f'modalities.{m}.quality.mean')}</tr>" for m in MODALITIES)
    missing = "".join(f"<tr><td>{label}</td>{_cell(report, 'missing.' + key)}</tr>" for key, label in (
        ("subjects", "subjects"), ("without_face", "without a face"), ("without_iris", "without an iris"),
        ("one_iris", "with one iris only"), ("without_fingers", "without fingerprints"),
        ("fingers_short_of_ten", "with some but fewer than ten fingers")))
    dup_rows = []
    for state, by_source in report["duplicates"].items():
        for source in by_source:
            dup_rows.append(f"<tr><td>{html.escape(state)}</td><td>{html.escape(source)}</td>"
                            f"{_cell(report, f'duplicates.{state}.{source}')}</tr>")
    dups = "".join(dup_rows) or '<tr><td colspan="3">no case</td></tr>'
    audit_rows = "".join(
        f"<tr><td>{html.escape('every partition' if p == '*' else p)}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M', time.gmtime(a['unix_ms'] / 1000))} UTC</td>"
        + "".join(_cell(report, f"audits.{p}.{k}") for k in ("subjects", "clusters", "subjects_in_clusters"))
        + "</tr>" for p, a in report.get("audits", {}).items()) or '<tr><td colspan="5">no audit yet</td></tr>'
    sync_rows = []
    for i, peer in enumerate(report["sync"]):
        p = f"sync.{i}"
        sync_rows.append(f"<tr{' class=late' if peer['late'] else ''}><td>{html.escape(peer['site'])}</td>"
                         f"{_cell(report, p + '.lag_s')}{_cell(report, p + '.pending')}"
                         f"{_cell(report, p + '.refused_bundles')}{_cell(report, p + '.gaps')}</tr>")
    sync_table = "".join(sync_rows) or '<tr><td colspan="5">no peer site</td></tr>'
    e = html.escape
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Data-quality report</title>"
        f"<style>{_CSS}</style><h1>Data-quality report</h1>"
        f"<p class=note>Site {e(report['site'])}, partitions {e(', '.join(report['partitions']) or 'none')}. "
        "Quality scores run from 0 (unusable) to 100; a refused capture is one an enrolment turned down "
        "(the operator was asked to capture again): many refusals at one site or by one operator point to a "
        "device or training problem.</p>"
        f'<h2 id="totals">Totals</h2><p>Subjects enrolled: <b><span data-json="totals.subjects">'
        f"{_fmt(report['totals']['subjects'])}</span></b></p>"
        "<table><tr><th>modality</th><th>samples</th><th>captures refused</th><th>refused share</th>"
        f"<th>mean quality</th></tr>{totals}</table>"
        f'<h2 id="quality">Quality scores</h2><img id="plot-quality" alt="quality score distributions" '
        f"src=\"{plots['quality']}\">"
        + "".join(_modality_section(report, m) for m in MODALITIES)
        + f'<h2 id="refusals">Refused captures</h2><img id="plot-refusals" alt="refusal reasons" '
        f"src=\"{plots['refusals']}\">"
        f'<h2 id="missing">Subjects short of a modality</h2><table>{missing}</table>'
        f'<img id="plot-fingers" alt="fingers per subject" src="{plots["fingers"]}">'
        f'<h2 id="groups">Side by side</h2><img id="plot-days" alt="enrolments per day" src="{plots["days"]}">'
        + "".join(_group_table(report, g) for g in ("site", "partition", "operator", "day"))
        + f'<h2 id="duplicates">Suspected duplicates (adjudication cases)</h2><table><tr><th>state</th>'
        f"<th>found by</th><th>cases</th></tr>{dups}</table>"
        "<p class=note>The last duplicate audit of each partition (tambua audit-duplicates): how many subjects "
        "it searched and how many groups of suspected duplicates it found.</p><table><tr><th>partition</th>"
        f"<th>when</th><th>subjects searched</th><th>clusters</th><th>subjects in clusters</th></tr>{audit_rows}"
        "</table>"
        f'<h2 id="sync">Sync with peer sites</h2><p class=note>Seconds since each peer last sent a bundle that was '
        "applied here; a site that stops syncing risks losing what it enrolled since.</p>"
        "<table><tr><th>site</th><th>seconds since last sync</th><th>changes pending</th><th>bundles refused</th>"
        f"<th>gaps</th></tr>{sync_table}</table></html>\n")


def write_html(report: dict, path: Path) -> None:
    Path(path).write_text(render(report), encoding="utf-8")
