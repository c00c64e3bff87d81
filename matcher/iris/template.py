"""Iris codes: the template, masked fractional Hamming distance over rotations, and the
compiled kernel that compares one probe with many enrolled irises.

A code is ``CHANNELS x ROWS x COLS`` bits (Gabor signs on the rubber-sheet grid, see
:mod:`enroll.iris.gabor`) with a mask bit per code bit (1 = iris seen there). Two codes
are compared at every rotation of ``-MAX_SHIFT..MAX_SHIFT`` code columns (each 2.8
degrees) by the fractional Hamming distance over the bits valid in both, and the best
rotation wins. The distance is normalised for how many bits were compared (Daugman,
"How iris recognition works", 2004): ``HDnorm = 0.5 - (0.5 - HD) * sqrt(n / N0)``, so a
low distance found on few bits counts for less; ``N0`` is the typical count of bits
compared between two irises in our sample sets.

The kernel is compiled by numba (``popcount`` through LLVM's ``ctpop``, which becomes
one instruction where the CPU has it, AVX-512 VPOPCNTDQ included, and a bit-twiddling
sequence where it has not); probes are rotated once, so the gallery is read once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from matcher.errors import ModelMismatch, TemplateFormatError
from matcher.codec import check_model_and_quality, pack_header, unpack_header

_FIELDS = struct.Struct("<BBHH")  # quality, channels, rows, cols
MAX_SHIFT = 8  # code columns each way: +-22.5 degrees of head tilt
N0 = 2300.0  # typical bits compared between two irises (median 2336 over CASIA-IrisV1 and MMU1)
MIN_BITS = 300  # fewer bits valid in both: no comparison (distance 0.5)


@dataclass(frozen=True)
class IrisTemplate:
    """The code of one iris image.

    Attributes:
        model_id: e.g. ``"iris/gabor-v1"``.
        code: (channels, rows, cols) bool filter signs.
        mask: same shape, True where the iris was seen (not eyelid, lash or reflection).
        quality: 0..100 sample quality score.
        components: named quality measures taken at extraction (e.g. ISO/IEC 29794-6 for
            irises); not part of the template bytes, so empty once parsed back.
        alternates: (code, mask) pairs of the same image normalised with the limbus a
            little inside and outside the one found; a probe made from an image is
            compared at each of them too, best kept (a radial search beside the
            rotation search). Not part of the template bytes: enrolled irises keep one
            code.
    """

    MAGIC: ClassVar[bytes] = b"TMBI"

    model_id: str
    code: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    quality: int = 0
    components: tuple[tuple[str, float], ...] = field(default=(), compare=False, repr=False)
    alternates: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        c, m = np.asarray(self.code), np.asarray(self.mask)
        if c.ndim != 3 or c.shape != m.shape or c.dtype != bool or m.dtype != bool or c.size % 64:
            raise TemplateFormatError("iris code and mask must be equal 3-D boolean arrays of 64k bits",
                                      "TEMPLATE_INVALID")
        if any(a.shape != c.shape or b.shape != c.shape or a.dtype != bool or b.dtype != bool
               for a, b in self.alternates):
            raise TemplateFormatError("alternate iris codes must be shaped as the code", "TEMPLATE_INVALID")
        check_model_and_quality(self.model_id, ("iris",), self.quality)
        c.setflags(write=False)
        m.setflags(write=False)

    @property
    def modality(self) -> str:
        return "iris"

    @property
    def usable(self) -> float:
        """Share of code bits that saw iris."""
        return float(self.mask.mean())

    def require_model(self, model_id: str) -> None:
        """Raise :class:`ModelMismatch` unless this template was made by ``model_id``."""
        if self.model_id != model_id:
            raise ModelMismatch(f"template made by {self.model_id}, expected {model_id}")

    @cached_property
    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        """(words,) uint64 code and mask, as a gallery stores them."""
        return _pack(self.code), _pack(self.mask)

    @cached_property
    def sketch(self) -> np.ndarray:
        """(64,) uint8: the 512-bit sketch of the first 1:N pass (see :func:`sketch_of`)."""
        return sketch_of(self.code)

    @cached_property
    def sketch_rotations(self) -> np.ndarray:
        """(17, 64) uint8 sketches at every rotation, -8..8 code columns."""
        return np.stack([sketch_of(np.roll(self.code, s, axis=2)) for s in SKETCH_SHIFTS])

    @cached_property
    def rotations(self) -> tuple[np.ndarray, np.ndarray]:
        """((2*MAX_SHIFT+1) x (1 + alternates), words) uint64 code and mask at every
        rotation of the code and of each alternate, as a probe is compared."""
        shifts = range(-MAX_SHIFT, MAX_SHIFT + 1)
        pairs = ((self.code, self.mask), *self.alternates)
        return (np.stack([_pack(np.roll(c, s, axis=2)) for c, _ in pairs for s in shifts]),
                np.stack([_pack(np.roll(m, s, axis=2)) for _, m in pairs for s in shifts]))

    def to_bytes(self) -> bytes:
        ch, rows, cols = self.code.shape
        head = pack_header(self.MAGIC, self.model_id, _FIELDS, self.quality, ch, rows, cols)
        return head + np.packbits(self.code).tobytes() + np.packbits(self.mask).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "IrisTemplate":
        """Parse and validate serialised template bytes.

        Raises:
            TemplateFormatError: corrupt bytes or an unknown format version.
        """
        model_id, (quality, ch, rows, cols), body = unpack_header(data, cls.MAGIC, _FIELDS)
        bits = ch * rows * cols
        if bits == 0 or bits % 64 or len(body) != bits // 4:
            raise TemplateFormatError(f"iris template body has {len(body)} bytes for {ch}x{rows}x{cols} bits")
        raw = np.unpackbits(np.frombuffer(body, np.uint8)).astype(bool)
        return cls(model_id, raw[:bits].reshape(ch, rows, cols), raw[bits:].reshape(ch, rows, cols), quality)


SKETCH_SHIFTS = tuple(range(-MAX_SHIFT, MAX_SHIFT + 1))
SKETCH_BITS = 512


def sketch_of(code: np.ndarray) -> np.ndarray:
    """512 bits for a fast unmasked first pass: the coarse filter's two channels (the
    last two), the four innermost radii (eyelids reach them least) and every other angle.
    Occluded bits are not masked here; the exact pass masks them. Probes are sketched at
    every rotation and each enrolled sketch scores its best rotation (see the model card
    for how often the nearest rows keep the exhaustive answer)."""
    return np.packbits(code[-2:, :4, ::2].ravel())


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits.ravel()).view(np.uint64)


def distances(probe: IrisTemplate, codes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Normalised distance of ``probe`` to each of many packed irises, best rotation.

    Args:
        probe: the probe template.
        codes / masks: (N, words) uint64, e.g. ``IrisTemplate.packed`` stacked.

    Returns:
        (N,) float64; 0.5 where fewer than ``MIN_BITS`` bits are valid in both.
    """
    from matcher.iris._kernel import best_distances  # numba: imported (and compiled) on first use

    pc, pm = probe.rotations
    if codes.shape[1:] != pc.shape[1:]:
        raise TemplateFormatError("iris codes of different sizes cannot be compared")
    out = np.empty(len(codes))
    best_distances(pc, pm, np.ascontiguousarray(codes), np.ascontiguousarray(masks), float(N0), int(MIN_BITS), out)
    return out


def distance(a: IrisTemplate, b: IrisTemplate) -> float:
    """Normalised Hamming distance between two irises at their best rotation."""
    c, m = b.packed
    return float(distances(a, c[None], m[None])[0])
