"""The minutiae networks a server can run: name -> (template model id, graph file).

Kept apart from the pipeline so that configuration and the CLI can name them without
importing onnxruntime. Templates of one network are not searched against another's
(different model ids), so a store keeps the network it was filled with: ``auto`` (the
default setting) runs the network of the finger templates already stored, and
``DEFAULT`` on a store that holds none.
"""

from __future__ import annotations

from typing import NamedTuple


class Network(NamedTuple):
    """One minutiae network.

    Attributes:
        model_id: the id its templates carry.
        graph: its ONNX file in the model folder.
        detect: the heat-map value at which a peak is a minutia. A student's heat map is
            not calibrated like LEADER's: its threshold is the one at which it finds as
            many minutiae as LEADER does at 0.55 on the training impressions, and its
            qualities are mapped onto LEADER's scale (see ``enroll.finger.minutiae``).
    """

    model_id: str
    graph: str
    detect: float = 0.55


LEADER = Network("finger/leader-mcc-v1", "finger_minutiae_leader.onnx")
NETWORKS = {
    "leader": LEADER,  # Cappelli's LEADER: the most accurate, ~300-450 ms a finger on one core
    # students distilled from LEADER (models/finger_student.py): see models/cards/finger.md
    # v2 at the threshold where it finds as many minutiae as LEADER (models/detection_threshold.py)
    "lite": Network("finger/lite-mcc-v2-counted", "finger_minutiae_lite_v2.onnx", detect=0.68),
    "lite-v2": Network("finger/lite-mcc-v2", "finger_minutiae_lite_v2.onnx"),  # for stores filled with it
    "lite-v1": Network("finger/lite-mcc-v1", "finger_minutiae_lite_v1.onnx"),  # for stores filled with it
}

DEFAULT = "leader"
AUTO = "auto"


def choose(setting: str, stored: dict[tuple[str, str], int]) -> tuple[str, str]:
    """The network a server runs, and why.

    Args:
        setting: a name of ``NETWORKS``, or ``auto``.
        stored: templates per (modality, model id) already in the store.

    Returns:
        (network name, reason). ``auto`` follows the store's finger templates when they
        all come from one known network; otherwise it gives ``DEFAULT`` (a store mixing
        networks is then refused by the server's model check, naming them).
    """
    if setting != AUTO:
        return setting, "configured"
    models = {model for (modality, model), n in stored.items() if modality == "finger" and n}
    names = [name for name, net in NETWORKS.items() if net.model_id in models]
    if len(models) == 1 and len(names) == 1:
        return names[0], f"the store's finger templates are {next(iter(models))}"
    if not models:
        return DEFAULT, "no finger templates stored yet"
    return DEFAULT, f"the store holds finger templates of {', '.join(sorted(models))}"
