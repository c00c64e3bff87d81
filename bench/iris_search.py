"""Iris 1:N at scale: ``python -m bench.search --modality iris --gallery N [N ...] --json OUT``.

Probes and their mates are real: the first and the fifth image of every CASIA-IrisV1
eye. The rest of the gallery is synthetic, drawn to match real irises: the Gabor
responses of every real image (CASIA-IrisV1 and MMU1) give the cross-spectral density,
across the angle axis, of the 24 response series (4 channels x 6 radii); synthetic
responses are circular Gaussian noise shaped by it (so neighbouring bits and the
real/imaginary pairs are as correlated as in real codes), their signs are the codes,
and each gets the mask of a random real image turned by a random angle. The JSON
records how the synthetic irises score against the probes beside real impostors
(quantiles and degrees of freedom), so one can check that they are realistic impostors.

For each gallery size it measures the service's :class:`matcher.iris.matcher.IrisMatcher`
both ways, exhaustive (every iris compared exactly) and with the sketch first pass:
latency on one thread (p50/p99), comparisons per second per core, how often the first
candidate is the same as the exhaustive search's, and how often it is the mate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from matcher.iris import template as iris
from matcher.calibration import Calibration
from matcher.iris.template import IrisTemplate
from matcher.iris.matcher import IrisMatcher

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iris"
MODEL = "iris/gabor-v2"


def real_responses(cache: Path) -> dict[str, np.ndarray]:
    """Gabor responses and masks of every real image (cached): keys ``response``
    (T, 4, 6, 128) float32, ``mask`` (T, 6, 128) bool, ``eye`` (T,) str, ``name``, and
    the extractor's alternate codes a probe is also compared at, ``alt_code`` and
    ``alt_mask`` (T, A, 4, 6, 128) bool."""
    # Named after the extractor's state: v2 = the sharpest-outline pupil finder and the
    # radial alternates (a cache from an older extractor would benchmark old templates).
    path = cache / "iris-responses-v2.npz"
    if not path.exists():
        import cv2

        from enroll.iris.pipeline import IrisExtractor, code_mask
        from enroll.iris.segment import occlusion_mask, rubber_sheet, segment
        from enroll.iris import gabor

        ex = IrisExtractor()
        resp, masks, eyes, names, alt_code, alt_mask = [], [], [], [], [], []
        for f in sorted(DATA.glob("*/*/*")):
            grey = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            try:
                t = ex.extract(f.read_bytes())  # every quality gate, as in the service
            except Exception:  # noqa: BLE001 - failures to enrol are left out
                continue
            alt_code.append([c for c, _ in t.alternates])
            alt_mask.append([m for _, m in t.alternates])
            b = segment(grey)  # again, for the strip the template does not keep
            strip, outside = rubber_sheet(grey, b, gabor.ROWS, gabor.COLS)
            resp.append(ex.encoder.run(strip[None, None])["response"][0])
            masks.append(code_mask(occlusion_mask(strip, outside)))
            eyes.append(f"{f.parent.parent.name}/{f.parent.name}")
            names.append(f.name)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, response=np.array(resp, np.float32), mask=np.array(masks), eye=np.array(eyes),
                 name=np.array(names), alt_code=np.array(alt_code, bool), alt_mask=np.array(alt_mask, bool))
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _template(response: np.ndarray, mask: np.ndarray, alt_code: np.ndarray | None = None,
              alt_mask: np.ndarray | None = None) -> IrisTemplate:
    """An enrolled iris (one code), or with the alternates a probe from an image (as the service makes it)."""
    code = response > 0
    alternates = () if alt_code is None else tuple(zip(alt_code, alt_mask))
    return IrisTemplate(MODEL, code, np.broadcast_to(mask, code.shape).copy(), alternates=alternates)


class Synthesiser:
    """Gaussian responses with the real cross-spectral density along the angle axis."""

    def __init__(self, responses: np.ndarray) -> None:
        t, ch, rows, cols = responses.shape
        self.shape = (ch, rows, cols)
        series = responses.reshape(t, ch * rows, cols).astype(np.float64)
        spectra = np.fft.fft(series, axis=2)  # (T, 24, 128)
        density = np.einsum("tif,tjf->fij", spectra, spectra.conj()) / t  # (128, 24, 24)
        w, v = np.linalg.eigh(density)
        self.shaping = v * np.sqrt(np.clip(w, 0, None))[:, None, :]  # density = A A^H

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, ch, rows, cols) bool codes."""
        ch, rows, cols = self.shape
        z = (rng.standard_normal((cols, ch * rows, n)) + 1j * rng.standard_normal((cols, ch * rows, n)))
        x = np.matmul(self.shaping, z)  # (128, 24, n)
        series = np.fft.ifft(x, axis=0).real  # along the angle
        return (series.transpose(2, 1, 0) > 0).reshape(n, ch, rows, cols)


def run(sizes: list[int], queries: int, cache: Path, shortlist: int = 50_000) -> dict:
    real = real_responses(cache)
    resp, masks, eyes = real["response"], real["mask"], real["eye"]
    casia = sorted({e for e in eyes if e.startswith("casia_v1/")})
    pairs = []
    for e in casia:
        idx = np.flatnonzero(eyes == e)
        if len(idx) >= 5:
            pairs.append((idx[0], idx[4]))
    pairs = pairs[:queries]
    mates = [_template(resp[a], masks[a]) for a, _ in pairs]
    probes = [_template(resp[b], masks[b], real["alt_code"][b], real["alt_mask"][b]) for _, b in pairs]
    syn = Synthesiser(resp)
    rng = np.random.default_rng(11)
    fillers_needed = max(sizes) - len(mates)
    words = mates[0].packed[0].size
    codes = np.empty((fillers_needed, words), np.uint64)
    fmasks = np.empty((fillers_needed, words), np.uint64)
    sketches = np.empty((fillers_needed, iris.SKETCH_BITS // 8), np.uint8)
    for start in range(0, fillers_needed, 20_000):
        n = min(20_000, fillers_needed - start)
        bits = syn.draw(n, rng)
        pick = rng.integers(len(masks), size=n)
        turn = rng.integers(0, bits.shape[-1], size=n)
        cols = (np.arange(bits.shape[-1])[None, :] - turn[:, None]) % bits.shape[-1]
        turned = np.take_along_axis(masks[pick], cols[:, None, :], axis=2)  # np.roll by turn, per row
        full = np.broadcast_to(turned[:, None], bits.shape)
        codes[start:start + n] = np.packbits(bits.reshape(n, -1), axis=1).view(np.uint64)
        fmasks[start:start + n] = np.packbits(full.reshape(n, -1), axis=1).view(np.uint64)
        sketches[start:start + n] = np.packbits(bits[:, -2:, :4, ::2].reshape(n, -1), axis=1)
    result: dict = {"probes": len(probes), "shortlist_rows": shortlist, "runs": []}

    # Are the synthetic irises realistic impostors? Probes against them and against real other eyes.
    fake = np.concatenate([iris.distances(p, codes[:2000], fmasks[:2000]) for p in probes[:50]])
    others = [i for i in range(len(resp)) if eyes[i] not in {eyes[a] for a, _ in pairs[:50]}][:2000]
    oc = np.stack([_template(resp[i], masks[i]).packed[0] for i in others])
    om = np.stack([_template(resp[i], masks[i]).packed[1] for i in others])
    true = np.concatenate([iris.distances(p, oc, om) for p in probes[:50]])
    q = [0.001, 0.01, 0.5]
    result["impostor_hdnorm"] = {
        "levels": q,
        "real": np.quantile(true, q).tolist(), "synthetic": np.quantile(fake, q).tolist(),
        "real_mean_std": [float(true.mean()), float(true.std())],
        "synthetic_mean_std": [float(fake.mean()), float(fake.std())],
    }
    cal = Calibration.load(MODEL)
    for n in sizes:
        k_fill = n - len(mates)
        rows = {}
        for mode, limit in (("exhaustive", 10**12), ("sketch", 0)):
            m = IrisMatcher(MODEL, cal, exhaustive_limit=limit, shortlist=shortlist)
            t0 = time.perf_counter()
            m.add_many("p", [f"M{i}" for i in range(len(mates))] + [f"F{i}" for i in range(k_fill)],
                       np.ones(n, np.int8),
                       np.concatenate([np.stack([t.packed[0] for t in mates]), codes[:k_fill]]),
                       np.concatenate([np.stack([t.packed[1] for t in mates]), fmasks[:k_fill]]),
                       np.concatenate([np.stack([t.sketch for t in mates]), sketches[:k_fill]]))
            build_s = time.perf_counter() - t0
            lat, firsts = [], []
            for p in probes:
                t0 = time.perf_counter()
                hits = m.search("p", 1, p, 1)
                lat.append((time.perf_counter() - t0) * 1000)
                firsts.append(hits[0][0] if hits else None)
            rows[mode] = firsts
            row = {"gallery": n, "search": mode, "build_s": build_s,
                   "ms_p50": float(np.percentile(lat, 50)), "ms_p99": float(np.percentile(lat, 99)),
                   "mate_rank1": float(np.mean([f == f"M{i}" for i, f in enumerate(firsts)])),
                   "bytes_per_iris": 2 * words * 8 + iris.SKETCH_BITS // 8}
            if mode == "exhaustive":
                row["irises_per_s_per_core"] = n / (row["ms_p50"] / 1000)
            else:
                row["sketches_per_s_per_core"] = n * len(iris.SKETCH_SHIFTS) / (row["ms_p50"] / 1000)
                row["same_first_as_exhaustive"] = float(np.mean([a == b for a, b in
                                                                 zip(firsts, rows["exhaustive"])]))
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    return result
