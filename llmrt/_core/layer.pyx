# cython: language_level=3
"""The weights of one decoder block (see layer.pxd)."""
import numpy as np

from llmrt._kernels._ops cimport Linear


def float_vector(a):
    """None, or a as a contiguous float32 vector (norm weights and biases)."""
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


cdef class Layer:
    """Weights of one decoder block: fused QKV rows [Q; K; V], attention out, MLP in (fused [gate; up]
    for gated MLPs), MLP out, and the norms' vectors."""

    def __init__(self, Linear qkv, Linear attn_out, Linear mlp_in, Linear mlp_out,
                 attn_norm_w, attn_norm_b=None, mlp_norm_w=None, mlp_norm_b=None):
        self.qkv, self.attn_out, self.mlp_in, self.mlp_out = qkv, attn_out, mlp_in, mlp_out
        self.attn_norm_w = float_vector(attn_norm_w)
        self.attn_norm_b = float_vector(attn_norm_b)
        self.mlp_norm_w = float_vector(mlp_norm_w)
        self.mlp_norm_b = float_vector(mlp_norm_b)
