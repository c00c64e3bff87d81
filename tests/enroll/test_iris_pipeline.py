"""Iris extraction on real CASIA-IrisV1 and MMU1 images: mated pairs below the
calibrated threshold, non-mated above, and each quality gate with its reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matcher.calibration import Calibration
from matcher.errors import QualityError
from matcher.iris.template import IrisTemplate, distance


def _png(grey: np.ndarray) -> bytes:
    return cv2.imencode(".png", grey)[1].tobytes()


@pytest.fixture(scope="module")
def threshold():
    return Calibration.load("iris/gabor-v2").distance_at_fmr(1e-4)


@pytest.mark.parametrize("dataset,eyes,files", [
    ("casia_v1", ["001", "002", "003", "004"], lambda d: sorted(d.iterdir())[:2]),
    ("mmu1", ["10_left", "11_right", "12_left", "13_right"], lambda d: sorted(d.iterdir())[:2]),
])
def test_mated_below_and_non_mated_above_threshold(iris_extractor, irises, threshold, dataset, eyes, files):
    t = {e: [iris_extractor.extract(f.read_bytes()) for f in files(irises / dataset / e)] for e in eyes}
    for e in eyes:
        assert distance(t[e][0], t[e][1]) < threshold, e
    for a in eyes:
        for b in eyes:
            if a != b:
                assert distance(t[a][0], t[b][1]) > threshold, (a, b)


def test_template_round_trip_and_rotation(iris_extractor, irises):
    t = iris_extractor.extract((irises / "casia_v1" / "005" / "005_1_1.jpg").read_bytes())
    back = IrisTemplate.from_bytes(t.to_bytes())
    assert np.array_equal(back.code, t.code) and np.array_equal(back.mask, t.mask) and back.quality == t.quality
    assert distance(t, back) < 0.05
    turned = IrisTemplate(t.model_id, np.roll(t.code, 5, axis=2), np.roll(t.mask, 5, axis=2))
    assert distance(t, turned) < 0.05  # a head tilt of 14 degrees is found by the rotation search
    assert 0 < t.quality <= 100 and 0.35 <= t.usable <= 1.0


def test_radial_alternates_find_a_limbus_found_elsewhere(iris_extractor, irises):
    """A probe from an image also carries its code with the iris band 8% narrower and
    wider; compared with an enrolment of the same image whose limbus was placed 8% out,
    the alternate finds it. Alternates are for probes only: not in the template bytes."""
    from enroll.iris.pipeline import RADIAL_SCALES, code_mask
    from enroll.iris.segment import occlusion_mask, rubber_sheet, segment, with_band
    from models import iris_gabor as gabor

    data = (irises / "casia_v1" / "005" / "005_1_1.jpg").read_bytes()
    probe = iris_extractor.extract(data)
    assert len(probe.alternates) == len(RADIAL_SCALES) == 2
    plain = IrisTemplate(probe.model_id, probe.code, probe.mask)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    strip, outside = rubber_sheet(grey, with_band(segment(grey), RADIAL_SCALES[1]), gabor.ROWS, gabor.COLS)
    code = iris_extractor.encoder.run(strip[None, None])["code"][0] > 0.5
    mask = np.broadcast_to(code_mask(occlusion_mask(strip, outside)), code.shape).copy()
    enrolled = IrisTemplate(probe.model_id, code, mask)
    # The alternate is the enrolled code itself: the distance of a code to itself.
    assert distance(probe, enrolled) == pytest.approx(distance(enrolled, enrolled), abs=1e-12)
    assert distance(plain, enrolled) > distance(probe, enrolled) + 0.05
    back = IrisTemplate.from_bytes(probe.to_bytes())
    assert back.alternates == () and np.array_equal(back.code, plain.code) and np.array_equal(back.mask, plain.mask)
    with pytest.raises(Exception, match="alternate"):
        IrisTemplate(probe.model_id, probe.code, probe.mask, alternates=((probe.code[:, :3], probe.mask[:, :3]),))


def test_kernel_equals_numpy_reference(iris_extractor, irises):
    from matcher.iris.template import MAX_SHIFT, N0, MIN_BITS

    a = iris_extractor.extract((irises / "casia_v1" / "006" / "006_1_1.jpg").read_bytes())
    b = iris_extractor.extract((irises / "casia_v1" / "006" / "006_2_1.jpg").read_bytes())
    best = 0.5
    for code, mask in ((a.code, a.mask), *a.alternates):  # the probe's code and its radial alternates
        for s in range(-MAX_SHIFT, MAX_SHIFT + 1):
            m = np.roll(mask, s, axis=2) & b.mask
            n = int(m.sum())
            hd = ((np.roll(code, s, axis=2) ^ b.code) & m).sum() / n
            if n >= MIN_BITS:
                best = min(best, 0.5 - (0.5 - hd) * np.sqrt(n / N0))
    assert distance(a, b) == pytest.approx(best, abs=1e-12)


def test_encoder_graph_equals_numpy_filters(models):
    import onnxruntime as ort

    from enroll.iris import gabor as iris_gabor

    strip = np.random.default_rng(3).uniform(0, 255, (1, 1, iris_gabor.ROWS, iris_gabor.COLS)).astype(np.float32)
    session = ort.InferenceSession(str(models / "iris_encode_gabor_v1.onnx"), providers=["CPUExecutionProvider"])
    response, code = session.run(["response", "code"], {"strip": strip})
    ref = iris_gabor.encode_numpy(strip[0, 0])
    assert np.abs(response[0] - ref).max() < 1e-4 * np.abs(ref).max()
    assert np.array_equal(code[0] > 0.5, ref > 0)


def test_quality_gates_name_the_reason(iris_extractor, irises, fingerprints):
    eye = cv2.imread(str(irises / "mmu1" / "5_left" / sorted((irises / "mmu1" / "5_left").iterdir())[0].name), 0)
    with pytest.raises(QualityError) as e:
        iris_extractor.extract(_png(np.full((240, 320), 128, np.uint8)))
    assert e.value.reason == "IRIS_NOT_FOUND"
    with pytest.raises(QualityError) as e:  # a fingerprint is not an eye
        iris_extractor.extract((fingerprints / "fvc2002_db1_b" / "101" / "101_1.tif").read_bytes())
    assert e.value.reason == "IRIS_NOT_FOUND"
    with pytest.raises(QualityError) as e:  # out of focus
        iris_extractor.extract(_png(cv2.GaussianBlur(eye, (0, 0), 3.0)))
    assert e.value.reason == "BLURRED"
    iris_extractor.extract(_png(eye))  # the sharp original passes every gate


def test_a_face_photo_is_refused_as_such(iris_extractor, lfw, irises):
    photos = sorted(lfw.rglob("*.jpg"))[::97][:12]
    for photo in photos:
        with pytest.raises(QualityError) as e:
            iris_extractor.extract(photo.read_bytes())
        assert e.value.reason == "FACE_PHOTO", photo.name
    for eye in sorted((irises / "casia_v1").iterdir())[:10]:  # eye close-ups are not faces
        iris_extractor.refuse_face_photo(cv2.imread(str(sorted(eye.iterdir())[0]))[:, :, ::-1].copy())


def test_closed_eye_is_refused(iris_extractor, irises):
    """A closed eye, made from a real one: the band of the eye opening replaced by the
    lid skin just above and below it, blended from one to the other."""
    from enroll.iris.segment import segment

    eye = cv2.imread(str(irises / "casia_v1" / "007" / "007_1_1.jpg"), 0)
    b = segment(eye)
    top, bottom = int(b.pupil.y - b.iris.r), int(b.pupil.y + b.iris.r)
    w = np.linspace(0.0, 1.0, bottom - top)[:, None]
    closed = eye.copy()
    closed[top:bottom] = ((1 - w) * eye[top - 1] + w * eye[bottom]).astype(np.uint8)
    with pytest.raises(QualityError) as e:
        iris_extractor.extract(_png(closed))
    assert e.value.reason == "IRIS_NOT_FOUND"


def test_iso_quality_components_follow_the_image(iris_extractor, irises):
    """ISO/IEC 29794-6 components: plausible geometry, a blurred copy is less sharp, a
    copy cropped tight around the iris (25 px beside it, 0.6 radius wanted) has too
    little margin."""
    path = irises / "casia_v1" / "007" / "007_1_1.jpg"
    grey = cv2.imread(str(path), 0)
    q = dict(iris_extractor.extract(path.read_bytes()).components)
    assert set(q) == {"usable_iris_area", "iris_sclera_contrast", "iris_pupil_contrast",
                      "pupil_boundary_circularity", "grey_scale_utilisation", "iris_radius",
                      "pupil_iris_ratio", "iris_pupil_concentricity", "margin_adequacy", "sharpness"}
    assert 80 < q["iris_radius"] < 130 and 20 <= q["pupil_iris_ratio"] <= 70
    assert q["iris_pupil_concentricity"] > 90 and q["iris_pupil_contrast"] > 30
    assert 4 < q["grey_scale_utilisation"] <= 8 and 0 < q["usable_iris_area"] <= 100
    soft = dict(iris_extractor.extract(_png(cv2.GaussianBlur(grey, (0, 0), 1.2))).components)
    assert soft["sharpness"] < q["sharpness"] - 5
    h, w = grey.shape
    cx, r = w // 2, int(q["iris_radius"])
    tight = dict(iris_extractor.extract(_png(grey[:, max(0, cx - r - 25): cx + r + 25])).components)
    assert q["margin_adequacy"] > 60 and tight["margin_adequacy"] < 45
    assert tight["iris_radius"] == pytest.approx(q["iris_radius"], abs=3)


# Real scanner images (IITD Iris v1.0, see ../shared/data/README.md). Boundaries marked by
# hand on 4x and 8x zoomed crops with a 10-pixel grid: the pupil's left, right and lower
# edges on the row and column through it; the limbus where the dark limbal ring meets the
# sclera, left and right. Pupil (x, y, r) and limbus (x, r) in image pixels.
MARKED = {
    "001_L_01": ((130.0, 143.5, 44.0), (130.5, 100.0)),  # open eye, two reflections in the pupil
    "019_L_04": ((180.8, 90.4, 48.3), (176.0, 95.0)),  # upper lashes across the top of the pupil
}
PUPIL_TOL, LIMBUS_TOL = 3.0, 6.0  # px; the limbus is a soft edge several pixels wide


def _iitd(irises, name: str):
    return irises / "iitd_v1" / name[:5] / f"{name}.png"


def _boundaries(extractor, grey):
    from enroll.iris.segment import remove_reflections, segment

    clean, _ = remove_reflections(grey)
    return segment(clean, lambda b: extractor.refusal(clean, b) is None)


def _assert_near(b, pupil, limbus, pupil_r=None, centre_tol=PUPIL_TOL):
    (px, py, pr), (ix, ir) = pupil, limbus
    assert abs(b.pupil.x - px) <= centre_tol and abs(b.pupil.y - py) <= centre_tol, b.pupil
    assert abs(b.pupil.r - pr) <= PUPIL_TOL if pupil_r is None else pupil_r[0] <= b.pupil.r <= pupil_r[1], b.pupil
    assert abs(b.iris.x - ix) <= LIMBUS_TOL and abs(b.iris.r - ir) <= LIMBUS_TOL, b.iris


@pytest.mark.parametrize("name", sorted(MARKED))
def test_real_scanner_boundaries_lie_where_marked_by_hand(iris_extractor, irises, name):
    grey = cv2.imread(str(_iitd(irises, name)), 0)
    _assert_near(_boundaries(iris_extractor, grey), *MARKED[name])


def test_a_ring_of_reflections_in_the_pupil_is_inpainted(iris_extractor, irises, threshold):
    """Eight illuminator spots around the pupil's centre, as close-up NIR cameras leave
    them: they are found and painted over, the boundaries stay where marked, and the
    iris matches the same image without them."""
    from enroll.iris.segment import remove_reflections

    grey = cv2.imread(str(_iitd(irises, "001_L_01")), 0)
    (px, py, pr), limbus = MARKED["001_L_01"]
    ring = grey.copy()
    spots = [(round(px + 0.6 * pr * np.cos(a)), round(py + 0.6 * pr * np.sin(a)))
             for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    for x, y in spots:
        cv2.circle(ring, (x, y), 3, 255, -1)
    clean, glints = remove_reflections(ring)
    assert all(glints[y, x] for x, y in spots) and clean[[y for _, y in spots], [x for x, _ in spots]].max() < 80
    _assert_near(_boundaries(iris_extractor, ring), (px, py, pr), limbus)
    assert distance(iris_extractor.extract(_png(ring)), iris_extractor.extract(_png(grey))) < threshold


def test_lashes_across_the_pupil_still_enrol_and_match(iris_extractor, irises, threshold):
    """019_L_04: the upper lashes join the pupil into one dark blob that is not round
    (the old pupil finder found nothing). It enrols and matches the other images of
    that eye, not those of another."""
    probe = iris_extractor.extract(_iitd(irises, "019_L_04").read_bytes())
    for other in ("019_L_01", "019_L_02", "019_L_03"):
        assert distance(probe, iris_extractor.extract(_iitd(irises, other).read_bytes())) < threshold, other
    for stranger in ("001_L_01", "020_R_06", "052_R_06"):
        assert distance(probe, iris_extractor.extract(_iitd(irises, stranger).read_bytes())) > threshold, stranger


def test_an_off_axis_eye_is_found_and_matches(iris_extractor, irises, threshold):
    """Gaze 30 degrees off the camera's axis foreshortens the eye across (by cos 30 =
    0.87, first order): made from 001_L_01 by squeezing it about the pupil's centre.
    The pupil's centre stays within 4 px of where marked (a circle fitted to an
    ellipse: boundaries are circles here, ellipses are not fitted), its radius lies
    between the ellipse's half-axes, and the code still matches the frontal image."""
    grey = cv2.imread(str(_iitd(irises, "001_L_01")), 0)
    (px, py, pr), (ix, ir) = MARKED["001_L_01"]
    k = np.cos(np.deg2rad(30))
    squeeze = np.float32([[k, 0, (1 - k) * px], [0, 1, 0]])
    # Cropped to what the squeezed image covers: no made-up border for a limbus to step on.
    left, right = int(np.ceil((1 - k) * px)), int((1 - k) * px + k * (grey.shape[1] - 1))
    oblique = cv2.warpAffine(grey, squeeze, grey.shape[::-1], flags=cv2.INTER_LINEAR)[:, left:right].copy()
    b = _boundaries(iris_extractor, oblique)
    # The limbus is looked for on the left and right: the ellipse's horizontal half-axis.
    _assert_near(b, (px - left, py, pr), (px - left + k * (ix - px), k * ir), pupil_r=(k * pr - 2, pr + 2),
                 centre_tol=4.0)
    assert distance(iris_extractor.extract(_png(oblique)), iris_extractor.extract(_png(grey))) < threshold


def test_a_real_closed_eye_is_refused(iris_extractor, irises):
    """087_L_02: the lids nearly shut, lashes meeting; a dark lash line at the image's
    edge is the only round-ish dark blob."""
    with pytest.raises(QualityError) as e:
        iris_extractor.extract(_iitd(irises, "087_L_02").read_bytes())
    assert e.value.reason == "IRIS_NOT_FOUND" and "open" in str(e.value)


def test_a_small_or_cut_iris_says_what_to_fix(iris_extractor, irises):
    """The framing gates name the fix: an eye far from the camera (the image shrunk to
    a quarter: the iris about 50 px across) and an eye at the picture's edge."""
    grey = cv2.imread(str(_iitd(irises, "001_L_01")), 0)
    far = cv2.resize(grey, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    far = cv2.copyMakeBorder(far, 80, 80, 106, 106, cv2.BORDER_REPLICATE)
    with pytest.raises(QualityError) as e:
        iris_extractor.extract(_png(far))
    assert e.value.reason == "IRIS_TOO_SMALL", e.value
    edge = grey[:, 84:].copy()  # the pupil just inside the left edge: 27% of the iris ring cut off
    with pytest.raises(QualityError) as e:
        iris_extractor.extract(_png(edge))
    assert e.value.reason == "IRIS_OUT_OF_FRAME", e.value


def test_a_larger_capture_is_coded_as_the_same_eye(iris_extractor, irises, threshold):
    """The same eye at 640 x 480 (twice the IITD frame) is worked on at 280 px on its short
    side: it enrols, matches the original, and reports its iris radius in captured pixels."""
    grey = cv2.imread(str(_iitd(irises, "001_L_01")), 0)
    big = cv2.resize(grey, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    small, large = iris_extractor.extract(_png(grey)), iris_extractor.extract(_png(big))
    assert distance(large, small) < threshold
    assert dict(large.components)["iris_radius"] == pytest.approx(2 * dict(small.components)["iris_radius"], rel=0.06)


@pytest.mark.parametrize("path", ["iitd_v1/081_R/081_R_06.png", "mmu1/10_left/fional1.png"])
def test_a_darker_exposure_still_enrols_and_matches(iris_extractor, irises, threshold, path):
    """Another camera's exposure: mid-tones darkened (gamma 1.6) leave the pupil only 23-30
    grey levels below the iris, but flat (contrast to noise over 20); an absolute 30-level
    gap refused these as no eye."""
    grey = cv2.imread(str(irises / path), 0)
    dark = (255 * (grey / 255.0) ** 1.6).astype(np.uint8)
    assert distance(iris_extractor.extract(_png(dark)), iris_extractor.extract(_png(grey))) < threshold


def test_review_shows_the_boundaries_and_strip_the_code_was_made_from(iris_extractor, irises):
    """The pupil lies inside the limbus, both on the eye; the strip's visible share is the
    template's usable share (the same segmentation, the same mask); a non-eye is refused
    the same way."""
    data = (irises / "casia_v1" / "005" / "005_1_1.jpg").read_bytes()
    r = iris_extractor.review(data)
    t = iris_extractor.extract(data)
    (px, py, pr), (ix, iy, ir) = r.pupil, r.iris
    h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).shape
    assert 0 < pr < ir and np.hypot(px - ix, py - iy) + pr < ir and 0 < ix < w and 0 < iy < h
    assert r.strip.dtype == np.uint8 and r.strip.shape == r.mask.shape and r.mask.dtype == bool
    assert abs(r.mask.mean() - t.usable) < 0.15
    with pytest.raises(QualityError):
        iris_extractor.review(_png(np.full((240, 320), 128, np.uint8)))
