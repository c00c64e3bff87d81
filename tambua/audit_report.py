"""The duplicate audit's result as files for people: CSV (one row per tying pair) and a
self-contained HTML page (clusters strongest first). Ids and scores only: never images,
templates or names. Owns formatting; takes the JSON object ``tambua audit-duplicates``
prints."""

from __future__ import annotations

import csv
import html
from pathlib import Path


def write_csv(result: dict, path: Path) -> None:
    """One row per pair that ties a cluster: cluster rank, partition, the two ids, score, FPIR."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["cluster", "partition", "cluster_size", "subject_a", "subject_b", "score", "fpir"])
        for rank, c in enumerate(result["clusters"], 1):
            for p in c["pairs"]:
                w.writerow([rank, c["partition"], len(c["subject_ids"]), *p["subject_ids"], f"{p['score']:.2f}",
                            f"{p['fpir']:.3g}"])


def write_html(result: dict, path: Path) -> None:
    """A page an operations officer can read: what was searched, then each cluster."""
    e = html.escape
    rows = []
    for rank, c in enumerate(result["clusters"], 1):
        pairs = "".join(f"<li>{e(p['subject_ids'][0])} &amp; {e(p['subject_ids'][1])}: score {p['score']:.1f}, "
                        f"FPIR {p['fpir']:.2g}</li>" for p in c["pairs"])
        rows.append(f"<tr><td>{rank}</td><td>{e(c['partition'])}</td><td>{e(', '.join(c['subject_ids']))}</td>"
                    f"<td>{c['best_fpir']:.2g}</td><td><ul>{pairs}</ul></td></tr>")
    body = "".join(rows) or '<tr><td colspan="5">No suspected duplicates.</td></tr>'
    path.write_text(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Duplicate audit</title>"
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}ul{margin:0;padding-left:1.2em}</style>"
        f"<h1>Duplicate audit</h1><p>{result['subjects']} subjects searched against each other in "
        f"{result['seconds']:.1f} s; two subjects are tied when their fused FPIR is at most "
        f"{result['max_fpir']:g}. <b>{len(result['clusters'])}</b> clusters of suspected duplicates, "
        "strongest first; a person decides each (tambua audit-duplicates --cases puts them on the "
        "adjudication queue).</p>"
        "<table><thead><tr><th>#</th><th>partition</th><th>subjects</th><th>best FPIR</th><th>pairs</th></tr>"
        f"</thead><tbody>{body}</tbody></table></html>\n", encoding="utf-8")
