"""The modality registry: what the engine and the service read instead of naming modalities."""

from __future__ import annotations

import pytest

from matcher.calibration import Calibration
from matcher.engine import MODALITIES, POSITIONS, default_matcher, sample_name
from matcher.errors import Unimplemented
from matcher.registry import REGISTRY


def test_each_modality_names_its_samples_as_people_do():
    fingers = [sample_name("finger", p) for p in range(1, 11)]
    assert len(set(fingers)) == 10 and fingers[1] == "right index finger" and fingers[5] == "left thumb finger"
    assert (sample_name("iris", 1), sample_name("iris", 2), sample_name("face", 0)) == ("right iris", "left iris",
                                                                                       "face")
    assert MODALITIES == tuple(REGISTRY) and all(0 in POSITIONS[m] for m in MODALITIES)


def test_each_modality_has_its_api_value_and_builds_its_matcher():
    from tambua.v1 import tambua_pb2 as pb

    models = {"face": "face/dlib-resnet-v1", "finger": "finger/leader-mcc-v1", "iris": "iris/gabor-v2"}
    assert set(models) == set(REGISTRY)
    for name, model_id in models.items():
        assert pb.Modality.Name(pb.Modality.Value(name.upper())) == name.upper()
        matcher = default_matcher(name, model_id)
        assert matcher.model_id == model_id and Calibration.load(model_id).model_id == model_id
    with pytest.raises(Unimplemented):
        default_matcher("voice", "voice/x-v1")
