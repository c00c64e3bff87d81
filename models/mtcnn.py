"""Convert the MTCNN cascade (Zhang et al. 2016) weights shipped in ``facenet-pytorch`` to ONNX.

The three state dicts (``pnet.pt``, ``rnet.pt``, ``onet.pt``) are read without torch
(:mod:`models.torch_legacy`); the layer order below is facenet-pytorch's
``models/mtcnn.py``. Inputs are NCHW RGB scaled as ``(x - 127.5) / 128``.

Outputs: P-Net ``reg`` (N,4,h,w) and ``prob`` (N,2,h,w) over a fully-convolutional
map (stride 2, cell 12); R-Net ``reg`` (N,4), ``prob`` (N,2) for 24x24 crops;
O-Net ``reg`` (N,4), ``landmarks`` (N,10: x1..x5, y1..y5 relative to the box),
``prob`` (N,2) for 48x48 crops.
"""

from __future__ import annotations

import numpy as np
import onnx

from models.onnx_graph import GraphBuilder

# name -> (input size or None for any, layer list). A layer is (kind, state-dict prefix, extra)
_NETS = {
    "pnet": (None, [("conv", "conv1"), ("prelu", "prelu1"), ("pool", 2, 2), ("conv", "conv2"),
                    ("prelu", "prelu2"), ("conv", "conv3"), ("prelu", "prelu3")]),
    "rnet": (24, [("conv", "conv1"), ("prelu", "prelu1"), ("pool", 3, 2), ("conv", "conv2"),
                  ("prelu", "prelu2"), ("pool", 3, 2), ("conv", "conv3"), ("prelu", "prelu3"),
                  ("flatten",), ("dense", "dense4"), ("prelu", "prelu4")]),
    "onet": (48, [("conv", "conv1"), ("prelu", "prelu1"), ("pool", 3, 2), ("conv", "conv2"),
                  ("prelu", "prelu2"), ("pool", 3, 2), ("conv", "conv3"), ("prelu", "prelu3"),
                  ("pool", 2, 2), ("conv", "conv4"), ("prelu", "prelu4"), ("flatten",),
                  ("dense", "dense5"), ("prelu", "prelu5")]),
}
# heads: output name -> (kind, prefix)
_HEADS = {
    "pnet": {"reg": ("conv", "conv4_2"), "prob": ("conv_softmax", "conv4_1")},
    "rnet": {"reg": ("dense", "dense5_2"), "prob": ("dense_softmax", "dense5_1")},
    "onet": {"reg": ("dense", "dense6_2"), "landmarks": ("dense", "dense6_3"), "prob": ("dense_softmax", "dense6_1")},
}


def to_onnx(name: str, sd: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Build one of ``pnet``, ``rnet``, ``onet`` from its state dict."""
    size, layers = _NETS[name]
    g = GraphBuilder()
    used = set()

    def param(key: str) -> str:
        used.add(key)
        return g.const(sd[key].astype(np.float32), key.replace(".", "_"))

    def conv(x: str, prefix: str) -> str:
        k = sd[prefix + ".weight"].shape[2]
        return g.op("Conv", [x, param(prefix + ".weight"), param(prefix + ".bias")], kernel_shape=[k, k])

    def dense(x: str, prefix: str) -> str:
        return g.op("Gemm", [x, param(prefix + ".weight"), param(prefix + ".bias")], transB=1)

    x, spatial = "image", True
    for layer in layers:
        kind = layer[0]
        if kind == "conv":
            x = conv(x, layer[1])
        elif kind == "prelu":
            slope = sd[layer[1] + ".weight"].astype(np.float32)
            used.add(layer[1] + ".weight")
            x = g.op("PRelu", [x, g.const(slope.reshape(-1, 1, 1) if spatial else slope, "slope")])
        elif kind == "pool":
            x = g.op("MaxPool", [x], kernel_shape=[layer[1]] * 2, strides=[layer[2]] * 2, ceil_mode=1)
        elif kind == "flatten":
            # facenet-pytorch flattens in (N, W, H, C) order: x.permute(0, 3, 2, 1)
            x = g.op("Flatten", [g.op("Transpose", [x], perm=[0, 3, 2, 1])], axis=1)
            spatial = False
        elif kind == "dense":
            x = dense(x, layer[1])
    for out_name, (kind, prefix) in _HEADS[name].items():
        y = conv(x, prefix) if kind.startswith("conv") else dense(x, prefix)
        if kind.endswith("softmax"):
            y = g.op("Softmax", [y], axis=1)
        g.output(y, out_name)
    unused = set(sd) - used
    if unused:
        raise ValueError(f"{name}: parameters not used by the graph: {sorted(unused)}")
    in_shape = ["N", 3, size or "H", size or "W"]
    out_shapes = {k: (["N", 2 if k == "prob" else 4, "h", "w"] if name == "pnet" else ["N", None]) for k in _HEADS[name]}
    return g.model(f"mtcnn_{name}", inputs={"image": in_shape}, outputs=out_shapes)
