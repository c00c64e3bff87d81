"""The minutiae networks a server can run: name -> (template model id, graph file).

Kept apart from the pipeline so that configuration and the CLI can name them without
importing onnxruntime. Templates of one network are not searched against another's
(different model ids), so a store keeps the network it was filled with.
"""

from __future__ import annotations

LEADER = ("finger/leader-mcc-v1", "finger_minutiae_leader.onnx")
NETWORKS = {
    "leader": LEADER,  # Cappelli's LEADER: the most accurate, ~300-450 ms a finger on one core
    # students distilled from LEADER (models/finger_student.py): see models/cards/finger.md
    "lite": ("finger/lite-mcc-v2", "finger_minutiae_lite_v2.onnx"),
    "lite-v1": ("finger/lite-mcc-v1", "finger_minutiae_lite_v1.onnx"),  # for stores filled with it
}
