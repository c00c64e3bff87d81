"""The one bit-counting primitive the compiled kernels share (iris codes, MCC bit cylinders)."""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, x):
    """LLVM ``ctpop``: one instruction where the CPU has one, a bit-twiddling sequence where not."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen
