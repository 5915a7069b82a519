# The weights of one decoder block, and float vectors as the nogil loops take them.
cimport numpy as cnp

from llmrt._kernels._ops cimport Linear


cdef class Layer:
    cdef public Linear qkv, attn_out, mlp_in, mlp_out
    cdef public object attn_norm_w, attn_norm_b, mlp_norm_w, mlp_norm_b


cdef inline const float *float_ptr(object a):
    """The data of a float_vector() result, NULL for None."""
    if a is None:
        return NULL
    return <const float *> cnp.PyArray_DATA(<cnp.ndarray> a)
