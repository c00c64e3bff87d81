"""Convert dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) to ONNX.

The .dat file holds weights but no topology: the network type is a C++ template
expression in dlib's ``examples/dnn_face_recognition_ex.cpp``::

    block<N,BN,s,SUB>  = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,s,s,SUB>>>>>
    ares<N,SUB>        = relu<add_prev1<block<N,affine,1,tag1<SUB>>>>
    ares_down<N,SUB>   = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUB>>>>>>>
    anet = loss_metric<fc_no_bias<128,avg_pool_everything<
             ares_down<256, ares<256,ares<256,ares_down<256,        (alevel0, alevel1)
             ares<128,ares<128,ares_down<128,                       (alevel2)
             ares<64,ares<64,ares<64,ares_down<64,                  (alevel3)
             ares<32,ares<32,ares<32,                               (alevel4)
             max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>...

We spell that expression out as a top-down list of nodes, parse the file along
it (checking every layer type, kernel, stride and padding the file declares)
and emit an ONNX graph. Semantics that matter for exactness:

* dlib's default padding is ``k//2`` for stride 1 and 0 otherwise, for convs and pools.
* ``add_prev`` output has the element-wise maximum of the operand shapes; the
  smaller operand is zero-padded at the end of each axis (channels in every
  down block, bottom/right rows and columns where the pool and the strided conv
  disagree on size).
* Batch norm was folded into ``affine`` layers at training time; we fold each
  affine into the convolution before it.
* The input layer computes ``(pixel - mean) / 256`` per channel, RGB order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from models.dlib_format import DlibFormatError, DlibReader
from models.onnx_graph import GraphBuilder

INPUT_SIZE = 150
EMBEDDING_DIM = 128


@dataclass
class Node:
    """One node of the dlib network, top-down order."""

    kind: str  # con, affine, relu, max_pool, avg_pool, avg_pool_all, fc, add_prev, tag, skip
    num: int = 0  # filters/outputs for con and fc, tag id for tag/skip/add_prev
    kernel: int = 0
    stride: int = 1
    params: dict[str, np.ndarray] = field(default_factory=dict)


def _block(n: int, stride: int) -> list[Node]:
    return [
        Node("affine"),
        Node("con", n, 3, 1),
        Node("relu"),
        Node("affine"),
        Node("con", n, 3, stride),
    ]


def _ares(n: int) -> list[Node]:
    return [Node("relu"), Node("add_prev", 1), *_block(n, 1), Node("tag", 1)]


def _ares_down(n: int) -> list[Node]:
    return [
        Node("relu"),
        Node("add_prev", 2),
        Node("avg_pool", 0, 2, 2),
        Node("skip", 1),
        Node("tag", 2),
        *_block(n, 2),
        Node("tag", 1),
    ]


def topology() -> list[Node]:
    """The network as a top-down node list (the last node sits on the input layer)."""
    nodes = [Node("fc", EMBEDDING_DIM), Node("avg_pool_all")]
    nodes += _ares_down(256)
    nodes += _ares(256) + _ares(256) + _ares_down(256)
    nodes += _ares(128) + _ares(128) + _ares_down(128)
    nodes += _ares(64) + _ares(64) + _ares(64) + _ares_down(64)
    nodes += _ares(32) + _ares(32) + _ares(32)
    nodes += [Node("max_pool", 0, 3, 2), Node("relu"), Node("affine"), Node("con", 32, 7, 2)]
    return nodes


def _default_pad(kernel: int, stride: int) -> int:
    return kernel // 2 if stride == 1 else 0


def _read_details(r: DlibReader, node: Node) -> None:
    kind = node.kind
    if kind == "con":
        version = r.expect_string("con_4", "con_5")
        params = r.tensor().ravel()
        num_filters = r.int()
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        pad = _default_pad(node.kernel, node.stride)
        if (num_filters, nr, nc, sy, sx, py, px) != (
            node.num, node.kernel, node.kernel, node.stride, node.stride, pad, pad,
        ):
            raise DlibFormatError(f"con layer mismatch: file says {(num_filters, nr, nc, sy, sx, py, px)}")
        fshape = r.alias_tensor()
        bshape = r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        use_bias = r.bool() if version == "con_5" else True
        nw = int(np.prod(fshape))
        node.params["W"] = params[:nw].reshape(fshape)
        node.params["B"] = (
            params[nw : nw + int(np.prod(bshape))].ravel() if use_bias else np.zeros(num_filters, np.float32)
        )
    elif kind == "affine":
        version = r.expect_string("affine_", "affine_2")
        params = r.tensor().ravel()
        gshape = r.alias_tensor()
        r.alias_tensor()
        mode = r.int()
        if mode != 0:  # CONV_MODE (0): one gamma/beta per channel
            raise DlibFormatError(f"affine layer in mode {mode}, expected CONV_MODE")
        if version == "affine_2" and r.bool():
            raise DlibFormatError("disabled affine layer not supported")
        k = int(np.prod(gshape))
        node.params["gamma"] = params[:k].copy()
        node.params["beta"] = params[k : 2 * k].copy()
    elif kind == "relu":
        version = r.expect_string("relu_", "relu_2")
        if version == "relu_2" and r.bool():
            raise DlibFormatError("disabled relu layer not supported")
    elif kind in ("max_pool", "avg_pool", "avg_pool_all"):
        r.expect_string("max_pool_2" if kind == "max_pool" else "avg_pool_2")
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        if kind == "avg_pool_all":
            expected = (0, 0, 1, 1, 0, 0)
        else:
            pad = _default_pad(node.kernel, node.stride)
            expected = (node.kernel, node.kernel, node.stride, node.stride, pad, pad)
        if (nr, nc, sy, sx, py, px) != expected:
            raise DlibFormatError(f"{kind} mismatch: file says {(nr, nc, sy, sx, py, px)}")
    elif kind == "fc":
        version = r.expect_string("fc_2", "fc_3")
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor().ravel()
        wshape = r.alias_tensor()
        r.alias_tensor()
        if r.int() != 1:  # FC_NO_BIAS
            raise DlibFormatError("expected fc_no_bias")
        for _ in range(4):
            r.float()
        if version == "fc_3":
            r.bool()
        if num_outputs != node.num:
            raise DlibFormatError(f"fc outputs {num_outputs}, expected {node.num}")
        node.params["W"] = params[: int(np.prod(wshape))].reshape(num_inputs, num_outputs)
    elif kind == "add_prev":
        r.expect_string("add_prev_")
    else:  # pragma: no cover - topology() only produces the kinds above
        raise AssertionError(kind)


def _read_layer_trailer(r: DlibReader, version: int) -> None:
    for _ in range(3):  # setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if version == 2:
        r.tensor()  # params_grad


def parse(data: bytes) -> tuple[list[Node], np.ndarray]:
    """Parse the .dat file along :func:`topology`.

    Returns:
        The node list with parameters filled in, and the input layer's RGB means.
    """
    r = DlibReader(data)
    r.expect_int(1, "add_loss_layer version")
    r.expect_string("loss_metric_2")
    r.float()  # margin and distance threshold of the training loss: unused at inference
    r.float()
    nodes = topology()
    versions = []
    # All nodes above the input-layer conv serialise "version, subnet, ..." so the
    # versions come first, top-down.
    for node in nodes[:-1]:
        v = r.int()
        if node.kind in ("tag", "skip"):
            if v != 1:
                raise DlibFormatError(f"{node.kind} version {v}")
        elif v not in (1, 2):
            raise DlibFormatError(f"add_layer version {v}")
        versions.append(v)
    # The bottom add_layer owns the input layer.
    v_in = r.int()
    if v_in not in (2, 3):
        raise DlibFormatError(f"input add_layer version {v_in}")
    r.expect_string("input_rgb_image_sized")
    means = np.array([r.float(), r.float(), r.float()], dtype=np.float32)
    if (r.int(), r.int()) != (INPUT_SIZE, INPUT_SIZE):
        raise DlibFormatError("input size is not 150x150")
    _read_details(r, nodes[-1])
    for _ in range(3):
        r.bool()
    for _ in range(3):  # x_grad, cached_output, grad_final
        r.tensor()
    if v_in == 3:
        r.int()
    # Then each layer's details and trailer, bottom-up.
    for node, v in zip(reversed(nodes[:-1]), reversed(versions)):
        if node.kind in ("tag", "skip"):
            continue
        _read_details(r, node)
        _read_layer_trailer(r, v)
    if not r.at_end():
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the network")
    return nodes, means


def to_onnx(nodes: list[Node], means: np.ndarray) -> onnx.ModelProto:
    """Build the ONNX graph: input ``image`` (N,3,150,150) RGB float 0..255, output ``embedding`` (N,128)."""
    g = GraphBuilder()
    x = g.op("Sub", ["image", g.const(means.reshape(1, 3, 1, 1), "mean")])
    x = g.op("Mul", [x, g.const(np.array(1.0 / 256.0, np.float32), "scale")])
    shape = [3, INPUT_SIZE, INPUT_SIZE]  # C, H, W of the current value
    tags: dict[int, tuple[str, list[int]]] = {}
    pending_conv: Node | None = None  # a conv waiting for the affine above it

    def emit_conv(conv: Node, gamma: np.ndarray | None, beta: np.ndarray | None) -> None:
        nonlocal x, shape
        w, b = conv.params["W"], conv.params["B"]
        if gamma is not None:
            w = w * gamma[:, None, None, None]
            b = b * gamma + beta
        pad = _default_pad(conv.kernel, conv.stride)
        x = g.op(
            "Conv",
            [x, g.const(w.astype(np.float32), "w"), g.const(b.astype(np.float32), "b")],
            kernel_shape=[conv.kernel, conv.kernel],
            strides=[conv.stride, conv.stride],
            pads=[pad] * 4,
        )
        size = lambda s: 1 + (s + 2 * pad - conv.kernel) // conv.stride  # noqa: E731
        shape = [conv.num, size(shape[1]), size(shape[2])]

    for node in reversed(nodes):
        if pending_conv is not None and node.kind != "affine":
            emit_conv(pending_conv, None, None)
            pending_conv = None
        kind = node.kind
        if kind == "con":
            pending_conv = node
        elif kind == "affine":
            if pending_conv is None:
                raise DlibFormatError("affine layer not directly above a conv")
            emit_conv(pending_conv, node.params["gamma"], node.params["beta"])
            pending_conv = None
        elif kind == "relu":
            x = g.op("Relu", [x])
        elif kind in ("max_pool", "avg_pool"):
            x = g.op(
                "MaxPool" if kind == "max_pool" else "AveragePool",
                [x],
                kernel_shape=[node.kernel, node.kernel],
                strides=[node.stride, node.stride],
            )
            size = lambda s: 1 + (s - node.kernel) // node.stride  # noqa: E731
            shape = [shape[0], size(shape[1]), size(shape[2])]
        elif kind == "tag":
            tags[node.num] = (x, list(shape))
        elif kind == "skip":
            x, shape = tags[node.num][0], list(tags[node.num][1])
        elif kind == "add_prev":
            other, oshape = tags[node.num]
            out_shape = [max(a, b) for a, b in zip(shape, oshape)]

            def padded(name: str, s: list[int]) -> str:
                if s == out_shape:
                    return name
                # ONNX pads: begins for N,C,H,W then ends; dlib pads only at the ends.
                ends = [o - c for o, c in zip(out_shape, s)]
                return g.op("Pad", [name, g.const(np.array([0, 0, 0, 0, 0, *ends], np.int64), "pads")])

            x = g.op("Add", [padded(x, shape), padded(other, oshape)])
            shape = out_shape
        elif kind == "avg_pool_all":
            x = g.op("GlobalAveragePool", [x])
            x = g.op("Flatten", [x], axis=1)
            shape = [shape[0]]
        elif kind == "fc":
            x = g.op("MatMul", [x, g.const(node.params["W"].astype(np.float32), "fc")], prefix="embedding_raw")
    g.output(x, "embedding")
    return g.model(
        "dlib_face_recognition_resnet_v1",
        inputs={"image": ["N", 3, INPUT_SIZE, INPUT_SIZE]},
        outputs={"embedding": ["N", EMBEDDING_DIM]},
    )
