"""A thin, thread-safe wrapper around an onnxruntime session on CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matcher.errors import ModelMissing


class OnnxModel:
    """One ONNX graph loaded for CPU inference.

    Input and output names come from the session, not from the caller. ``run`` is
    safe to call from several threads at once (onnxruntime sessions are).

    Args:
        path: the .onnx file.
        threads: intra-op threads; 1 suits the per-request path (requests run in
            parallel across threads instead), more suits bulk batches.
        expected_sha256: when given, the file must hash to it.
    """

    def __init__(self, path: Path, threads: int = 1, expected_sha256: str | None = None) -> None:
        if not path.exists():
            raise ModelMissing(f"model file {path.name} not found in {path.parent}; run `make setup`")
        data = path.read_bytes()
        if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise ModelMissing(f"model file {path.name} does not match its manifest; rebuild with `make setup`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.input_name = self._session.get_inputs()[0].name
        self.input_shape = self._session.get_inputs()[0].shape
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on one float32 NCHW batch; returns outputs by name."""
        outs = self._session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outs))
