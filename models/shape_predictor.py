"""Convert dlib's 5-point face landmark model (``shape_predictor_5_face_landmarks.dat``) to arrays.

The model is an ensemble of regression trees (Kazemi & Sullivan 2014): a cascade
of forests; each forest reads pixel-difference features at positions anchored
on the current shape estimate. A tree ensemble is not a good fit for ONNX, so we
store the trees as dense numpy arrays (``.npz``) and evaluate them with
vectorised numpy in :mod:`enroll.face.landmarks`.

File layout (``dlib/image_processing/shape_predictor.h``)::

    int version (1)
    matrix<float,0,1>                     initial_shape   (x0, y0, x1, y1, ...)
    vector<vector<regression_tree>>       forests         per cascade
        regression_tree: vector<split_feature{ulong idx1, ulong idx2, float thresh}> splits,
                         vector<matrix<float,0,1>> leaf_values
    vector<vector<ulong>>                 anchor_idx      per cascade, per feature pixel
    vector<vector<vector<float,2>>>       deltas          per cascade, per feature pixel
"""

from __future__ import annotations

import numpy as np

from models.dlib_format import DlibFormatError, DlibReader


def parse(data: bytes) -> dict[str, np.ndarray]:
    """Parse the .dat file into dense arrays.

    Returns:
        ``initial_shape`` (P*2,), ``split_idx`` (C, T, S, 2) int32, ``split_thresh``
        (C, T, S) float32, ``leaf_values`` (C, T, L, P*2) float32, ``anchor_idx``
        (C, F) int32 and ``deltas`` (C, F, 2) float32, where C cascades, T trees,
        S = L - 1 splits, F feature pixels and P landmarks.
    """
    r = DlibReader(data)
    r.expect_int(1, "shape_predictor version")
    initial_shape = r.float_matrix().ravel()
    n_cascades = r.int()
    split_idx, split_thresh, leaves = [], [], []
    for _ in range(n_cascades):
        n_trees = r.int()
        c_idx, c_thr, c_leaf = [], [], []
        for _ in range(n_trees):
            n_splits = r.int()
            idx = np.empty((n_splits, 2), np.int32)
            thr = np.empty(n_splits, np.float32)
            for s in range(n_splits):
                idx[s, 0], idx[s, 1] = r.int(), r.int()
                thr[s] = r.float()
            n_leaves = r.int()
            if n_leaves != n_splits + 1:
                raise DlibFormatError("tree is not complete")
            leaf = np.stack([r.float_matrix().ravel() for _ in range(n_leaves)])
            c_idx.append(idx)
            c_thr.append(thr)
            c_leaf.append(leaf)
        split_idx.append(np.stack(c_idx))
        split_thresh.append(np.stack(c_thr))
        leaves.append(np.stack(c_leaf))
    if r.int() != n_cascades:
        raise DlibFormatError("anchor_idx count differs from cascade count")
    anchors = []
    for _ in range(n_cascades):
        anchors.append(np.array([r.int() for _ in range(r.int())], np.int32))
    if r.int() != n_cascades:
        raise DlibFormatError("deltas count differs from cascade count")
    deltas = []
    for _ in range(n_cascades):
        n = r.int()
        deltas.append(np.array([(r.float(), r.float()) for _ in range(n)], np.float32))
    if not r.at_end():
        raise DlibFormatError("trailing bytes after the shape predictor")
    return {
        "initial_shape": initial_shape.astype(np.float32),
        "split_idx": np.stack(split_idx),
        "split_thresh": np.stack(split_thresh),
        "leaf_values": np.stack(leaves).astype(np.float32),
        "anchor_idx": np.stack(anchors),
        "deltas": np.stack(deltas),
    }
