"""The data-quality report: what the store's capture facts, refused captures, cases and
peers say about a gallery, as one JSON document (``QualityReport``; rendered as HTML by
``tambua/quality_report.py``).

Per modality: how many samples, their quality score distribution and its components,
image sizes and resolutions, captures refused and why; per site, partition, operator
and day the same counts side by side; subjects short of a modality (no face, one iris,
fingers short of ten); the duplicates cases found (by enrolment, sync and the audit);
how long since each peer site last synced.

Pure: takes the store's rows, returns a dict of plain numbers and strings (JSON as is).
Names no subject. May import ``matcher/`` (the rows' types) only.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from matcher.repository import PeerState, Refusal, SampleFact

VERSION = 1
MODALITIES = ("face", "finger", "iris")
BINS = 10  # quality histogram: 0-9, 10-19, ..., 90-100
GROUPS = ("site", "partition", "operator", "day")
THIS_SITE = "(this server)"  # how a report names the site that holds the store
UNKNOWN = "(unknown)"


@dataclass(frozen=True)
class Peer:
    """A peer site as the report shows it."""

    state: PeerState
    pending: int
    max_lag_s: float = 0.0  # the site's limit (0: none set)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, float)
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return {"n": int(a.size), "mean": round(float(a.mean()), 2), "min": round(float(a.min()), 2),
            "p10": round(float(p10), 2), "p50": round(float(p50), 2), "p90": round(float(p90), 2),
            "max": round(float(a.max()), 2)}


def _histogram(scores: list[int]) -> list[int]:
    counts = [0] * BINS
    for q in scores:
        counts[min(int(q) // (100 // BINS), BINS - 1)] += 1
    return counts


def _rate(refused: int, enrolled: int) -> float:
    return round(refused / (refused + enrolled), 4) if refused + enrolled else 0.0


def _day(unix_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(unix_ms / 1000))


def _key(group: str, row, site: str) -> str:
    if group == "day":
        return _day(row.unix_ms)
    if group == "site":
        return row.site or site
    return getattr(row, group) or UNKNOWN


def _modality(facts: list[SampleFact], refusals: list[Refusal]) -> dict:
    scores = [f.quality for f in facts]
    components: dict[str, list[float]] = defaultdict(list)
    for f in facts:
        for name, value in f.components.items():
            components[name].append(float(value))
    positions: dict[int, list[int]] = defaultdict(list)
    for f in facts:
        positions[f.position].append(f.quality)
    sized = [f for f in facts if f.width and f.height]
    sizes = Counter(f"{f.width}x{f.height}" for f in sized)
    reasons = Counter(r.reason for r in refusals)
    return {
        "samples": len(facts),
        "subjects": len({(f.partition, f.subject) for f in facts}),
        "quality": {**_stats(scores), "histogram": _histogram(scores)},
        "components": {name: _stats(v) for name, v in sorted(components.items())},
        "by_position": {str(p): {"samples": len(v), "mean_quality": round(float(np.mean(v)), 2)}
                        for p, v in sorted(positions.items())},
        "image_sizes": {
            "known": len(sized), "unknown": len(facts) - len(sized),
            "width": _stats([f.width for f in sized]), "height": _stats([f.height for f in sized]),
            "common": dict(sizes.most_common(5)),
        },
        "dpi": {str(k): n for k, n in sorted(Counter(f.dpi or UNKNOWN for f in facts).items(), key=str)},
        "refused": len(refusals),
        "refusal_rate": _rate(len(refusals), len(facts)),
        "refusal_reasons": dict(reasons.most_common()),
    }


def _missing(facts: list[SampleFact]) -> dict:
    """Subjects short of a modality: no face, irises fewer than two, fingers fewer than ten."""
    have: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for f in facts:
        have[(f.partition, f.subject)][f.modality] += 1
    fingers = Counter(min(c["finger"], 10) for c in have.values())
    return {
        "subjects": len(have),
        "without_face": sum(1 for c in have.values() if not c["face"]),
        "without_iris": sum(1 for c in have.values() if not c["iris"]),
        "one_iris": sum(1 for c in have.values() if c["iris"] == 1),
        "without_fingers": fingers.get(0, 0),
        "fingers_short_of_ten": sum(n for k, n in fingers.items() if 0 < k < 10),
        "finger_counts": {str(k): fingers.get(k, 0) for k in range(11)},
        "combinations": dict(Counter("+".join(m for m in MODALITIES if c[m]) for c in have.values()).most_common()),
    }


def _groups(group: str, facts: list[SampleFact], refusals: list[Refusal], site: str) -> list[dict]:
    by: dict[str, list] = defaultdict(list)
    refused: dict[str, list] = defaultdict(list)
    for f in facts:
        by[_key(group, f, site)].append(f)
    for r in refusals:
        refused[_key(group, r, site)].append(r)
    rows = []
    for key in sorted(set(by) | set(refused)):
        fs, rs = by.get(key, []), refused.get(key, [])
        row = {"key": key, "subjects": len({(f.partition, f.subject) for f in fs}), "samples": {}, "mean_quality": {},
               "refused": {}, "refusal_rate": {}}
        for m in MODALITIES:
            q = [f.quality for f in fs if f.modality == m]
            n_refused = sum(1 for r in rs if r.modality == m)
            row["samples"][m] = len(q)
            row["mean_quality"][m] = round(float(np.mean(q)), 2) if q else None
            row["refused"][m] = n_refused
            row["refusal_rate"][m] = _rate(n_refused, len(q))
        rows.append(row)
    return rows


def _sync(peers: dict[str, Peer], now_ms: int) -> list[dict]:
    out = []
    for site, p in sorted(peers.items()):
        last = p.state.last_import_ms
        lag = round((now_ms - last) / 1000, 1) if last else None
        out.append({"site": site, "last_import_unix_ms": last or 0, "lag_s": lag, "pending": p.pending,
                    "refused_bundles": p.state.refused, "gaps": p.state.gaps, "max_lag_s": p.max_lag_s or None,
                    "late": bool(p.max_lag_s) and (lag is None or lag > p.max_lag_s)})
    return out


def build(facts: Iterable[SampleFact], refusals: Iterable[Refusal], partitions: list[str],
          cases: dict[str, dict[tuple[str, str], int]] | None = None, peers: dict[str, Peer] | None = None,
          site: str = "", now_ms: int | None = None, audits: dict[str, dict] | None = None) -> dict:
    """The report as a JSON-ready dict.

    Args:
        facts: every enrolled sample's facts in ``partitions``.
        refusals: the refused captures to count.
        cases: case counts per state name (``open``, ``decided``, ``withdrawn``), each
            ``{(partition, source): n}``.
        peers: the peer sites by name.
        site: this server's site name (samples enrolled here; "" names it ``(this server)``).
        audits: the last completed duplicate audit's counts, by partition ("*": all).
    """
    facts, refusals = list(facts), list(refusals)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    site = site or THIS_SITE
    by_modality = {m: _modality([f for f in facts if f.modality == m], [r for r in refusals if r.modality == m])
                   for m in MODALITIES}
    dup = {}
    for state, counts in (cases or {}).items():
        per_source: Counter = Counter()
        for (_, source), n in counts.items():
            per_source[source] += n
        dup[state] = dict(sorted(per_source.items()))
    return {
        "version": VERSION,
        "generated_unix_ms": now_ms,
        "site": site,
        "partitions": list(partitions),
        "totals": {
            "subjects": len({(f.partition, f.subject) for f in facts}),
            "samples": {m: by_modality[m]["samples"] for m in MODALITIES},
            "refused": {m: by_modality[m]["refused"] for m in MODALITIES},
        },
        "modalities": by_modality,
        "missing": _missing(facts),
        "groups": {g: _groups(g, facts, refusals, site) for g in GROUPS},
        "duplicates": dup,
        "audits": {p: a for p, a in sorted((audits or {}).items()) if p == "*" or p in partitions},
        "sync": _sync(peers or {}, now_ms),
    }
