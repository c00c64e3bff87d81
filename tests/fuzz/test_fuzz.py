"""Bounded fuzzing in CI: random bytes and mutations of valid seeds through every parser
hostile input reaches (see harness.py for the contract). TAMBUA_FUZZ_EXAMPLES raises the
count; the long coverage-guided run is ``python -m tests.fuzz.run`` (atheris)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import TARGETS, check

EXAMPLES = int(os.environ.get("TAMBUA_FUZZ_EXAMPLES", "300"))


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A valid seed with a few edits: flipped, set, inserted or deleted bytes, a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[at:]
        elif op == "repeat" and data:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_hostile_bytes_get_a_clear_error_never_a_crash(target):
    _, seeds = TARGETS[target]
    pool = seeds()
    for seed in pool:
        check(target, seed)  # the seeds themselves are valid

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(st.binary(max_size=4096), mutated(pool)))
    def fuzz(data):
        check(target, data)

    fuzz()


def test_a_dying_wsq_decoder_costs_one_request_not_the_process():
    import signal

    from enroll import image
    from matcher.errors import ImageDecodeError
    from tests.fuzz.harness import _images

    wsq = [b for b in _images() if b[:2] == b"\xff\xa0"][0]
    assert image.decode_image(wsq).rgb.shape == (40, 48, 3)
    for pid in list(image._wsq_pool._processes):  # what a fatal signal in NIST's C decoder does
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ImageDecodeError) as e:
        image.decode_image(wsq)
    assert e.value.reason == "IMAGE_UNDECODABLE"
    assert image.decode_image(wsq).rgb.shape == (40, 48, 3)  # a fresh worker serves the next one
