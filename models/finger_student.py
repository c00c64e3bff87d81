"""A small minutiae network distilled from LEADER, for extraction within 150 ms on one core.

LEADER (``models/leader.py``) spends ~300 ms of one core on a 500 dpi finger. The student
is a plain U-Net working at half resolution and below (the image enters through a 2x2
space-to-depth, the answer leaves through a 2x2 depth-to-space): about 1.2 GMAC for a
288 x 352 canvas (v1) against LEADER's ~5. It is trained by ``models/train_finger_student.py``
to reproduce LEADER's position heat map, direction and type on real impressions; its graph
ends in exactly LEADER's output contract (``head_conc`` [1, H, W, 4]: position, direction,
type, position after a 7 x 7 non-maximum suppression), so the extractor runs either file.

One description of the layers (``layers(widths)``) drives both the ONNX graph built here from the
trained weights (``to_onnx``) and the PyTorch module the training script builds
(``torch_module``), so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import onnx

from models.onnx_graph import GraphBuilder

# (name, in, out, kernel, stride): 3x3 convolutions are followed by ReLU; the 1x1 "lateral"
# projections feed the decoder's skip additions; "head" is linear. The channel widths of
# the levels (1/2 to 1/16 resolution, or 1/32 with a fifth) are the one free choice; v1 is
# (24, 48, 96, 128), v2 (36, 72, 144, 192).
V1_WIDTHS = (24, 48, 96, 128)
NMS = 7  # LEADER's non-maximum suppression window
INPUT_SCALE, INPUT_SHIFT = 1 / 64, -2.0  # grey 0..255 -> about -2..2
HEAD_OUT = 16  # 4 outputs x (2 x 2) sub-pixels: position, cos, sin, type


def encoder(widths: tuple[int, ...] = V1_WIDTHS) -> list[tuple]:
    """Two 3x3 convolutions a level; every level after the first halves the resolution."""
    out, prev = [], 4
    for i, w in enumerate(widths, 1):
        out += [(f"e{i}a", prev, w, 3, 1 if i == 1 else 2), (f"e{i}b", w, w, 3, 1)]
        prev = w
    return out


def skips(widths: tuple[int, ...] = V1_WIDTHS) -> tuple[str, ...]:
    """Encoder outputs kept for the decoder's additions, finest first (all but the coarsest)."""
    return tuple(f"e{i}b" for i in range(1, len(widths)))


def decoder(widths: tuple[int, ...] = V1_WIDTHS) -> list[tuple[tuple, tuple]]:
    """(lateral 1x1 from the coarser level, 3x3 after the addition), coarsest first."""
    return [((f"l{k}", widths[k], widths[k - 1], 1, 1), (f"d{k}", widths[k - 1], widths[k - 1], 3, 1))
            for k in range(len(widths) - 1, 0, -1)]


def layers(widths: tuple[int, ...] = V1_WIDTHS) -> list[tuple]:
    """Every convolution of the network, in order."""
    return (encoder(widths) + [layer for pair in decoder(widths) for layer in pair]
            + [("head", widths[0], HEAD_OUT, 3, 1)])


def widths_of(weights: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The level widths a set of weights was trained with."""
    out, i = [], 1
    while f"e{i}b.weight" in weights:
        out.append(int(weights[f"e{i}b.weight"].shape[0]))
        i += 1
    return tuple(out)


def weight_shapes(widths: tuple[int, ...] = V1_WIDTHS) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Layer name -> (weight shape OIHW, bias shape)."""
    return {n: ((o, i, k, k), (o,)) for n, i, o, k, _ in layers(widths)}


def widen(weights: dict[str, np.ndarray], widths: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """The same function with more channels per level, to go on training with more capacity.

    Old channels keep their weights and never read the new ones (zero columns); the new
    channels read everything with fresh He-scaled weights and nothing reads them yet, so
    the widened network's output equals the old one's until training moves it.
    """
    rng = np.random.default_rng(seed)
    old = widths_of(weights)
    if len(widths) != len(old) or any(n < o for n, o in zip(widths, old)):
        raise ValueError(f"cannot narrow {old} to {widths} (levels are added by deepen)")
    out = {}
    for name, (shape, _) in weight_shapes(widths).items():
        w_old, b_old = weights[f"{name}.weight"], weights[f"{name}.bias"]
        o_old, i_old = w_old.shape[:2]
        fan_in = shape[1] * shape[2] * shape[3]
        w = np.zeros(shape, np.float32)
        w[o_old:] = rng.normal(0, np.sqrt(2 / fan_in), (shape[0] - o_old, *shape[1:]))
        w[:o_old, :i_old] = w_old
        b = np.zeros(shape[0], np.float32)
        b[:o_old] = b_old
        out[f"{name}.weight"], out[f"{name}.bias"] = w, b
    return out


def deepen(weights: dict[str, np.ndarray], width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The same function with one more, coarser level of ``width`` channels (twice the
    receptive field for a few percent more work: the new level runs at 1/32 resolution).

    The new encoder level starts at random; its lateral projection starts at zero, so it
    adds nothing yet, and the new 3x3 after the addition starts as the identity, which
    passes the old coarsest level's (non-negative, ReLU) output through unchanged.
    """
    rng = np.random.default_rng(seed)
    old = widths_of(weights)
    widths = old + (width,)
    k = len(old)  # the new decoder step: lateral l{k} from level k+1, refine d{k} at level k
    out = dict(weights)
    for name, (shape, bshape) in weight_shapes(widths).items():
        if f"{name}.weight" in out:
            continue
        if name == f"d{k}":
            w = np.zeros(shape, np.float32)
            w[np.arange(shape[0]), np.arange(shape[0]), 1, 1] = 1.0
        elif name == f"l{k}":
            w = np.zeros(shape, np.float32)
        else:
            w = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape).astype(np.float32)
        out[f"{name}.weight"], out[f"{name}.bias"] = w, np.zeros(bshape, np.float32)
    return out


def to_onnx(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The student as an ONNX graph with LEADER's input and output contract.

    Args:
        weights: ``"<layer>.weight"`` (OIHW) and ``"<layer>.bias"`` float32 arrays for
            every layer of ``layers(widths)``; the widths are read from the shapes.
    """
    widths = widths_of(weights)
    for n, (ws, bs) in weight_shapes(widths).items():
        if weights[f"{n}.weight"].shape != ws or weights[f"{n}.bias"].shape != bs:
            raise ValueError(f"student weights for {n} have the wrong shape")
    g = GraphBuilder()

    def conv(x: str, layer: tuple, relu: bool) -> str:
        n, _, _, k, stride = layer
        y = g.op("Conv", [x, g.const(weights[f"{n}.weight"].astype(np.float32), n + "_w"),
                          g.const(weights[f"{n}.bias"].astype(np.float32), n + "_b")],
                 kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        return g.op("Relu", [y]) if relu else y

    x = g.op("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = g.op("Add", [g.op("Mul", [x, g.const(np.array(INPUT_SCALE, np.float32))]),
                     g.const(np.array(INPUT_SHIFT, np.float32))])
    x = g.op("SpaceToDepth", [x], blocksize=2)
    kept, skipped = skips(widths), []
    for layer in encoder(widths):
        x = conv(x, layer, relu=True)
        if layer[0] in kept:
            skipped.append(x)
    scales = g.const(np.array([1, 1, 2, 2], np.float32))
    for (lateral, refine), skip in zip(decoder(widths), reversed(skipped)):
        up = g.op("Resize", [conv(x, lateral, relu=False), "", scales], mode="nearest")
        x = conv(g.op("Relu", [g.op("Add", [up, skip])]), refine, relu=True)
    x = g.op("DepthToSpace", [conv(x, layers(widths)[-1], relu=False)], blocksize=2, mode="CRD")
    pos_logit, cos, sin, typ_logit = (g.op("Slice", [x, g.const(np.array([c], np.int64)),
                                                     g.const(np.array([c + 1], np.int64)),
                                                     g.const(np.array([1], np.int64))]) for c in range(4))
    pos = g.op("Sigmoid", [pos_logit])
    # atan2(sin, cos) by the half-angle identity: 2 atan(y / (r + x)).
    r = g.op("Sqrt", [g.op("Add", [g.op("Mul", [cos, cos]), g.op("Mul", [sin, sin])])])
    eps = g.const(np.array(1e-12, np.float32))
    direction = g.op("Mul", [g.op("Atan", [g.op("Div", [sin, g.op("Add", [g.op("Add", [r, cos]), eps])])]),
                             g.const(np.array(2.0, np.float32))])
    peak = g.op("Cast", [g.op("Equal", [pos, g.op("MaxPool", [pos], kernel_shape=[NMS, NMS],
                                                       pads=[NMS // 2] * 4, strides=[1, 1])])],
                to=onnx.TensorProto.FLOAT)
    out = g.op("Concat", [pos, direction, g.op("Sigmoid", [typ_logit]), g.op("Mul", [pos, peak])], axis=1)
    g.output(g.op("Transpose", [out], perm=[0, 2, 3, 1]), "head_conc")
    return g.model("finger_student", {"input": [1, "H", "W", 1]}, {"head_conc": [1, "H", "W", 4]})


def torch_module(widths: tuple[int, ...] = V1_WIDTHS):
    """The same network as a ``torch.nn.Module`` returning the 4 raw maps at full size
    (position logit, cos, sin, type logit). Training only: imports PyTorch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleDict({n: nn.Conv2d(i, o, k, stride=s, padding=k // 2)
                                        for n, i, o, k, s in layers(widths)})

        def forward(self, grey: torch.Tensor) -> torch.Tensor:
            x = F.pixel_unshuffle(grey * INPUT_SCALE + INPUT_SHIFT, 2)
            kept, skipped = skips(widths), []
            for n, *_ in encoder(widths):
                x = F.relu(self.convs[n](x))
                if n in kept:
                    skipped.append(x)
            for ((lat, *_), (ref, *_)), skip in zip(decoder(widths), reversed(skipped)):
                up = F.interpolate(self.convs[lat](x), scale_factor=2, mode="nearest")
                x = F.relu(self.convs[ref](F.relu(up + skip)))
            return F.pixel_shuffle(self.convs["head"](x), 2)

        def load_numpy_weights(self, weights: dict[str, np.ndarray]) -> None:
            with torch.no_grad():
                for n, m in self.convs.items():
                    m.weight.copy_(torch.from_numpy(weights[f"{n}.weight"]))
                    m.bias.copy_(torch.from_numpy(weights[f"{n}.bias"]))

        def numpy_weights(self) -> dict[str, np.ndarray]:
            return {k: v.detach().cpu().numpy().astype(np.float32) for n, m in self.convs.items()
                    for k, v in ((f"{n}.weight", m.weight), (f"{n}.bias", m.bias))}

    return Student()
