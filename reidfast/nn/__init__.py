"""Modules built on the ops: the batched per-branch layers of part-based heads and the heads.

The typed train-mode outputs of the heads and models are in `reidfast.nn.outputs`.
"""

from reidfast.nn.branches import BranchClassifier, BranchEmbedding
from reidfast.nn.outputs import EmbeddingOutput, MGNOutput, PartOutput, PLAOutput, PLROSNetOutput
from reidfast.nn.pyramid_head import PyramidHead, PyramidHeadReference, reference_to_batched_state_dict

__all__ = [
    "BranchClassifier",
    "BranchEmbedding",
    "EmbeddingOutput",
    "MGNOutput",
    "PLAOutput",
    "PLROSNetOutput",
    "PartOutput",
    "PyramidHead",
    "PyramidHeadReference",
    "reference_to_batched_state_dict",
]
