"""The named options of the ops, defined once for the Python side.

The op schemas take these names as strings; the C++ and CUDA kernels parse them with the enums of
csrc/reduction.h and csrc/pyramid_pool.h (same order), and the Triton kernels take an option's
position in these tuples as a compile-time code (`REDUCTIONS.index(reduction)`).
"""

# Reductions of adaptive_margin_loss: mean over all pairs, sum (the paper), or the mean of the
# positive pairs' terms plus the mean of the negative pairs' terms.
REDUCTIONS = ("mean", "sum", "balanced")

# Pooling of pyramid_pool: GMP, GAP, or their sum (the Pyramid paper's branch op).
POOL_MODES = ("max", "avg", "max+avg")
