"""A student network's detection threshold, set by counting minutiae on its training impressions.

A student's heat map is not calibrated like LEADER's: at LEADER's 0.55 the first students
found 10-25% more minutiae, and the extra weak ones cost accuracy on noisy impressions. Its
threshold is therefore chosen without looking at any accuracy: the heat-map value at which
it finds, on average over the impressions it was trained on, as many minutiae as LEADER
finds there at 0.55 (both through the service's own segmentation and foreground rules).

Usage::

    python -m models.detection_threshold --graph models/build/finger_minutiae_lite_v3.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GRID = np.round(np.arange(0.40, 0.901, 0.01), 2)


def peak_counts(graph: Path, images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(LEADER's minutiae count at 0.55 per image, the student's count per image and
    ``GRID`` threshold (images, len(GRID))); impressions the quality gates refuse are left out."""
    from enroll.finger.minutiae import LeaderMinutiae
    from enroll.finger.networks import LEADER
    from enroll.finger.pipeline import check_foreground, grey_500dpi
    from enroll.finger.segment import segment
    from matcher.errors import QualityError
    from models.paths import model_dir

    leader, student = LeaderMinutiae(model_dir() / LEADER.graph), LeaderMinutiae(graph)
    teacher_counts, student_counts = [], []
    for path in images:
        grey = grey_500dpi(path.read_bytes())
        fg = segment(grey)
        try:
            check_foreground(fg)
        except QualityError:
            continue
        teacher_counts.append(int(np.count_nonzero(leader.peaks(grey, fg)[:, 4] >= LEADER.detect)))
        q = student.peaks(grey, fg)[:, 4]
        student_counts.append([int(np.count_nonzero(q >= t)) for t in GRID])
    return np.array(teacher_counts), np.array(student_counts)


def matching_threshold(teacher: np.ndarray, student: np.ndarray) -> float:
    """The ``GRID`` threshold at which the student's mean count is nearest the teacher's."""
    return float(GRID[int(np.argmin(np.abs(student.mean(axis=0) - teacher.mean())))])


def main(argv: list[str] | None = None) -> int:
    from models.train_finger_student import training_images

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--graph", type=Path, required=True, help="the student's ONNX graph")
    p.add_argument("--json", type=Path, help="write the counts and the threshold here")
    args = p.parse_args(argv)
    teacher, student = peak_counts(args.graph, training_images())
    t = matching_threshold(teacher, student)
    at = {f"{g:.2f}": round(float(m), 2) for g, m in zip(GRID, student.mean(axis=0))}
    result = {"graph": args.graph.name, "impressions": int(len(teacher)), "leader_mean_at_0.55": round(float(teacher.mean()), 2),
              "student_mean_at": at, "threshold": t}
    print(f"{len(teacher)} training impressions: LEADER finds {teacher.mean():.1f} minutiae on average at 0.55; "
          f"the student {at['0.55']:.1f} at 0.55 and {at[f'{t:.2f}']:.1f} at {t:.2f} (its threshold)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
