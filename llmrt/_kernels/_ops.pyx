# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernel tiers, thread control and the Linear layer (Python boundary of the C kernels).

Everything that crosses into C is validated here: dtypes, contiguity, shapes, group sizes.
"""
import operator
import os

import numpy as np

from llmrt.errors import InvalidArgumentError
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from cython.parallel cimport prange

from llmrt._kernels.kernels cimport (
    LR_QK, LR_N_TIERS, LR_ACT_SILU, LR_ACT_GELU, LR_ACT_GELU_TANH, LR_ACT_RELU, lr_kernels, lr_qmat, lr_qact, lr_attn_args,
    lr_tier_name, lr_tier_compiled, lr_tier_supported, lr_best_tier, lr_tier_kernels, lr_avx_vnni_encoding,
    lr_set_threads, lr_panel_prefetch, LR_PANEL_PREFETCH_MAX, lr_get_threads, lr_openmp_enabled, lr_f16_to_f32,
    lr_bf16_hw_available, lr_bf16_hw_enabled, lr_set_bf16_hw,
    lr_panels_nbytes, lr_panel_src, lr_pack_panel_srcs, lr_panel_srcs_f16_exact, lr_unpack_panels, lr_panel_row,
)

cnp.import_array()

QK = LR_QK
TIER_NAMES = tuple(lr_tier_name(t).decode() for t in range(LR_N_TIERS))
COMPUTE_DTYPES = {"int8": COMPUTE_INT8, "fp32": COMPUTE_FP32, "bf16": COMPUTE_BF16}

# from this many rows on, the two-pass row work is split between the threads
cdef enum:
    PAR_ROWS = 16

cdef const lr_kernels *_active = NULL
cdef int _active_tier = 0


cdef const lr_kernels *active_kernels() noexcept nogil:
    return _active


def compiled_tiers():
    """Names of the ISA tiers built into this installation."""
    return [TIER_NAMES[t] for t in range(LR_N_TIERS) if lr_tier_compiled(t)]


def panel_prefetch():
    """Bytes ahead that decode tiles prefetch into L2 (chosen for this CPU at import)."""
    lr_tier_supported(0)            # runs the CPU detection that sets it
    return lr_panel_prefetch


def set_panel_prefetch(int64_t nbytes):
    """Change the decode prefetch distance (a multiple of 64 from 0 to 65536; for tuning on a new CPU)."""
    global lr_panel_prefetch
    if nbytes < 0 or nbytes > LR_PANEL_PREFETCH_MAX or nbytes % 64:
        raise ValueError(f"the panel prefetch distance must be a multiple of 64 from 0 to {LR_PANEL_PREFETCH_MAX}, "
                         f"got {nbytes}")
    lr_tier_supported(0)
    lr_panel_prefetch = nbytes


def avx_vnni_encoding():
    """How the avx_vnni tier runs on this CPU: "vex" (AVX-VNNI), "evex" (the same code with EVEX-encoded
    dot products, on a CPU with AVX512-VNNI but no AVX-VNNI), or "" (not at all)."""
    return lr_avx_vnni_encoding().decode()


def supported_tiers():
    """Names of the compiled tiers this CPU and OS can run."""
    return [TIER_NAMES[t] for t in range(LR_N_TIERS) if lr_tier_compiled(t) and lr_tier_supported(t)]


def best_tier():
    return TIER_NAMES[lr_best_tier()]


def current_tier():
    """Name of the tier every kernel call uses now."""
    return TIER_NAMES[_active_tier]


def set_isa(name=None):
    """Select the kernel tier by name; None (or "auto") picks the best one this CPU runs."""
    global _active, _active_tier
    if name is None or name == "auto":
        tier = lr_best_tier()
    else:
        if name not in TIER_NAMES:
            raise ValueError(f"unknown ISA tier {name!r}; choose one of {', '.join(TIER_NAMES)} or 'auto'")
        tier = TIER_NAMES.index(name)
        if not lr_tier_compiled(tier):
            raise RuntimeError(f"ISA tier {name!r} is not compiled into this build of llmrt "
                               f"(compiled: {', '.join(compiled_tiers())})")
        if not lr_tier_supported(tier):
            raise RuntimeError(f"this CPU cannot run ISA tier {name!r} "
                               f"(it supports: {', '.join(supported_tiers())}); unset LLMRT_ISA or pick one of those")
    _active = lr_tier_kernels(tier)
    _active_tier = tier
    return TIER_NAMES[tier]


def bf16_instructions_available():
    """True when this build and CPU can run the bf16 GEMM of the 512-bit tiers on AVX512-BF16."""
    return bool(lr_bf16_hw_available())


def bf16_instructions(enable=None):
    """Whether the 512-bit tiers use AVX512-BF16 for bf16 compute when available (default True).
    Pass a bool to change it (e.g. to test their portable bf16 code); returns the setting."""
    global _active
    if enable is not None:
        lr_set_bf16_hw(1 if enable else 0)
        _active = lr_tier_kernels(_active_tier)
    return bool(lr_bf16_hw_enabled())


# far past any useful oversubscription, below what makes an OpenMP runtime fail to start its pool
MAX_THREADS = 1024


def set_num_threads(n):
    """Threads used by the kernels (OpenMP), 1 to MAX_THREADS."""
    try:
        count = operator.index(n) if not isinstance(n, bool) else None
    except TypeError:
        count = None
    if count is None or not 1 <= count <= MAX_THREADS:
        raise InvalidArgumentError(f"threads must be an integer from 1 to {MAX_THREADS}, got {n!r}")
    lr_set_threads(count)


def get_num_threads():
    return lr_get_threads()


def openmp_enabled():
    return bool(lr_openmp_enabled())


set_isa(os.environ.get("LLMRT_ISA") or None)


# ---------------------------------------------------------------- validation helpers
def _c_array(a, dtype, name, ndim):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def _rows_f32(x, int64_t k, name="x"):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"{name} must have shape (rows, {k}), got {x.shape}")
    return np.ascontiguousarray(x)


cdef class ActScratch:
    """Buffers for two-pass activation quantization, sized for `rows` rows of up to max_k inputs and
    max_n outputs; one per engine, shared by its Linears (which run one at a time)."""

    def __init__(self, int64_t rows, int64_t max_k, int64_t max_n):
        nb = max_k // LR_QK + 1
        r = np.zeros(rows * max_k, np.float32)
        q = np.zeros(2 * rows * max_k + LR_QK, np.int8)
        d = np.zeros(2 * rows * nb, np.float32)
        s = np.zeros(2 * rows * nb, np.int32)
        y = np.zeros(2 * rows * max_n, np.float32)
        self.arrays = [r, q, d, s, y]
        self.rows, self.max_k, self.max_n = rows, max_k, max_n
        self.r = <float *> cnp.PyArray_DATA(r)
        self.q = <int8_t *> cnp.PyArray_DATA(q)
        self.d = <float *> cnp.PyArray_DATA(d)
        self.s = <int32_t *> cnp.PyArray_DATA(s)
        self.y = <float *> cnp.PyArray_DATA(y)


cdef class Linear:
    """Y = X W^T (+ bias) for one weight matrix: dense fp32/fp16 or block-quantized."""

    def __cinit__(self):
        self.act_passes = 1
        self.residual_above = 0.0
        self.scratch = None
        self.arrays = {}
        self.bias_ptr = NULL
        self.w32 = NULL
        self.w16 = NULL
        self.icompute = COMPUTE_FP32

    @staticmethod
    def dense(w, bias=None):
        """Dense weight matrix (n, k), float32 or float16."""
        cdef Linear self = Linear()
        cdef cnp.ndarray arr
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise ValueError("a dense weight must be a 2-D NumPy array")
        if w.dtype == np.float16:
            arr = np.ascontiguousarray(w)
            self.ikind = KIND_F16
            self.w16 = <const uint16_t *> cnp.PyArray_DATA(arr)
        else:
            arr = np.ascontiguousarray(w, dtype=np.float32)
            self.ikind = KIND_F32
            self.w32 = <const float *> cnp.PyArray_DATA(arr)
        self.n, self.k = arr.shape[0], arr.shape[1]
        self.arrays["w"] = arr
        self._set_bias(bias)
        return self

    @staticmethod
    def quantized(qs, d, m, int bits, int group, bias=None, compute="int8", bint panels=True):
        """Quantized matrix in the kernel layout (see kernels.h): qs (n, k*bits/8) uint8,
        d and m (n, k/group) float32 (m may be None).  With int8 compute and panels=True the
        matrix is repacked into panels (fp16 scales when every scale converts exactly) and the
        canonical planes are dropped; they are rebuilt only if a tier without panel kernels runs."""
        cdef Linear self = Linear()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if compute not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {sorted(COMPUTE_DTYPES)}, got {compute!r}")
        qs = _c_array(qs, np.uint8, "qs", 2)
        d = _c_array(d, np.float32, "d", 2)
        cdef int64_t n = qs.shape[0]
        cdef int64_t k = qs.shape[1] * 8 // bits
        if group <= 0 or group % QK or k % group:
            raise ValueError(f"group size {group} must be a positive multiple of {QK} dividing k={k}")
        if d.shape != (n, k // group):
            raise ValueError(f"scales must have shape {(n, k // group)}, got {d.shape}")
        if m is not None:
            m = _c_array(m, np.float32, "m", 2)
            if m.shape != d.shape:
                raise ValueError(f"offsets must have shape {d.shape}, got {m.shape}")
        self.ikind = KIND_QUANT
        self.icompute = COMPUTE_DTYPES[compute]
        self.n, self.k = n, k
        self.q.n, self.q.k, self.q.bits, self.q.group = n, k, bits, group
        self.q.qs = <const uint8_t *> cnp.PyArray_DATA(qs)
        self.q.d = <const float *> cnp.PyArray_DATA(d)
        self.q.m = <const float *> cnp.PyArray_DATA(m) if m is not None else NULL
        self.arrays.update(qs=qs, d=d)
        if m is not None:
            self.arrays["m"] = m
        self._set_bias(bias)
        if panels and self.icompute == COMPUTE_INT8:
            self._to_panels()
        return self

    @staticmethod
    def from_parts(parts, int bits, int group, bias=None):
        """int8 compute on the row-concatenation of several quantized matrices (fused QKV, gate-up),
        repacked into panels in one pass, without a concatenated copy.  Each part is (qs, d, m):
        qs uint8 (rows, k/group, group*bits/8), its group bytes contiguous but the groups and rows
        at any strides (a view into stored block records), d and m float32 (rows, k/group), m None
        when the part has no offsets (it then gets its implicit ones if another part has some)."""
        cdef Linear self = Linear()
        cdef int64_t ng = -1, gbytes = group * bits // 8
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if group <= 0 or group % QK:
            raise ValueError(f"group size {group} must be a positive multiple of {QK}")
        checked = []
        for i, part in enumerate(parts):
            qs, d, m = part
            if not isinstance(qs, np.ndarray) or qs.dtype != np.uint8 or qs.ndim != 3:
                raise TypeError(f"part {i}: qs must be a 3-D uint8 array (rows, groups, group bytes)")
            if ng < 0:
                ng = qs.shape[1]
            if qs.shape[1] != ng or qs.shape[2] != gbytes:
                raise ValueError(f"part {i}: qs must have shape (rows, {ng}, {gbytes}), got {qs.shape}")
            if qs.shape[0] and (qs.strides[2] != 1 or qs.strides[0] < 0 or qs.strides[1] < 0):
                qs = np.ascontiguousarray(qs)   # the packer reads a group's bytes as one run
            d = _c_array(d, np.float32, f"part {i} scales", 2)
            if d.shape != qs.shape[:2]:
                raise ValueError(f"part {i}: scales must have shape {qs.shape[:2]}, got {d.shape}")
            if m is not None:
                m = _c_array(m, np.float32, f"part {i} offsets", 2)
                if m.shape != d.shape:
                    raise ValueError(f"part {i}: offsets must have shape {d.shape}, got {m.shape}")
            checked.append((qs, d, m))
        if ng <= 0:
            raise ValueError("from_parts needs at least one part with at least one group")
        self.ikind = KIND_QUANT
        self.icompute = COMPUTE_INT8
        self.n, self.k = sum(q.shape[0] for q, _, _ in checked), ng * group
        self.q.n, self.q.k, self.q.bits, self.q.group = self.n, self.k, bits, group
        self._pack(checked)
        self._set_bias(bias)
        return self

    def _to_panels(self):
        cdef int64_t ng = self.k // self.q.group
        qs = self.arrays["qs"].reshape(self.n, ng, self.q.group * self.q.bits // 8)
        self._pack([(qs, self.arrays["d"], self.arrays.get("m"))])

    def _pack(self, parts):
        """Panels from validated parts; the canonical planes are dropped."""
        cdef int nsrc = len(parts), s
        cdef int asym = any(m is not None for _, _, m in parts)
        cdef lr_panel_src *src = <lr_panel_src *> malloc(max(nsrc, 1) * sizeof(lr_panel_src))
        cdef cnp.ndarray qs, d, m, buf
        cdef int f16
        if src == NULL:
            raise MemoryError()
        try:
            for s in range(nsrc):
                qs, d, m = parts[s]
                src[s].rows = qs.shape[0]
                src[s].qs = <const uint8_t *> cnp.PyArray_DATA(qs)
                src[s].row_stride, src[s].group_stride = qs.strides[0], qs.strides[1]
                src[s].d = <const float *> cnp.PyArray_DATA(d)
                src[s].m = <const float *> cnp.PyArray_DATA(m) if m is not None else NULL
            f16 = lr_panel_srcs_f16_exact(src, nsrc, self.k // self.q.group, self.q.bits, asym)
            buf = _aligned_bytes(lr_panels_nbytes(self.n, self.k, self.q.bits, self.q.group, asym, f16))
            with nogil:
                lr_pack_panel_srcs(src, nsrc, self.k, self.q.bits, self.q.group, asym, f16,
                                   <uint8_t *> cnp.PyArray_DATA(buf))
        finally:
            free(src)
        self.q.panels = <const uint8_t *> cnp.PyArray_DATA(buf)
        self.q.panel_f16, self.q.panel_m = f16, asym
        self.q.qs, self.q.d, self.q.m = NULL, NULL, NULL
        for name in ("qs", "d", "m"):
            self.arrays.pop(name, None)
        self.arrays["panels"] = buf

    cdef int _ensure_canonical(self) except -1:
        """Rebuild qs, d (and m) from the panels, for kernels that read the canonical planes."""
        if self.q.qs != NULL or self.q.panels == NULL:
            return 0
        cdef int64_t ng = self.k // self.q.group
        qs = np.empty((self.n, self.k * self.q.bits // 8), np.uint8)
        d = np.empty((self.n, ng), np.float32)
        m = np.empty((self.n, ng), np.float32) if self.q.panel_m else None
        lr_unpack_panels(&self.q, <uint8_t *> cnp.PyArray_DATA(qs), <float *> cnp.PyArray_DATA(d),
                         <float *> cnp.PyArray_DATA(m) if m is not None else NULL)
        self.arrays.update(qs=qs, d=d)
        if m is not None:
            self.arrays["m"] = m
            self.q.m = <const float *> cnp.PyArray_DATA(m)
        self.q.d = <const float *> cnp.PyArray_DATA(d)
        self.q.qs = <const uint8_t *> cnp.PyArray_DATA(qs)
        return 0

    @property
    def layout(self):
        """'panels', 'panels+canonical' (a tier without panel kernels ran), 'canonical' or 'dense'."""
        if self.ikind != KIND_QUANT:
            return "dense"
        if self.q.panels == NULL:
            return "canonical"
        return "panels" if self.q.qs == NULL else "panels+canonical"

    @property
    def panel_scales(self):
        """Scale dtype inside the panels ('fp16' or 'fp32'), None without panels."""
        if self.ikind != KIND_QUANT or self.q.panels == NULL:
            return None
        return "fp16" if self.q.panel_f16 else "fp32"

    def _set_bias(self, bias):
        if bias is None:
            return
        b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if b.shape[0] != self.n:
            raise ValueError(f"bias must have {self.n} elements, got {b.shape[0]}")
        self.arrays["bias"] = b
        self.bias_ptr = <const float *> cnp.PyArray_DATA(b)

    def use_two_pass_activations(self, ActScratch scratch, float residual_above=0.0):
        """Under int8 compute, quantize the input twice (value, then the rounding residual) and run
        both through one weight pass: ~15-bit activations for layers whose inputs have outliers
        (the MLP down projection).

        residual_above = t > 0: only the blocks of 32 inputs whose first-pass step is over t times
        the row's mean step get the residual (the blocks an outlier made coarse); the other residual
        blocks are zero and the panel kernels skip them where a whole tile of rows has none, so the
        second pass costs a fraction of the first.  0: every block (twice the integer work)."""
        if not residual_above >= 0.0:
            raise ValueError(f"residual_above must be >= 0, got {residual_above}")
        if self.ikind != KIND_QUANT or self.icompute != COMPUTE_INT8:
            return
        if scratch.max_k < self.k or scratch.max_n < self.n:
            raise ValueError(f"scratch of {scratch.max_k} inputs / {scratch.max_n} outputs is too small "
                             f"for a {self.n}x{self.k} layer")
        self.scratch = scratch
        self.act_passes = 2
        self.residual_above = residual_above

    @property
    def kind(self):
        return ("f32", "f16", f"q{self.q.bits}")[self.ikind]

    @property
    def compute(self):
        return ("int8", "fp32", "bf16")[self.icompute] if self.ikind == KIND_QUANT else "fp32"

    @property
    def group(self):
        return self.q.group if self.ikind == KIND_QUANT else None

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.arrays.values())

    cdef void apply(self, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy,
                    int8_t *aq, float *ad, int32_t *asum) noexcept nogil:
        cdef lr_qact act
        cdef int64_t r, j
        if self.ikind == KIND_F32:
            _active.gemm_f32(self.w32, self.n, self.k, x, ldx, rows, y, ldy)
        elif self.ikind == KIND_F16:
            _active.gemm_f16(self.w16, self.n, self.k, x, ldx, rows, y, ldy)
        elif self.icompute == COMPUTE_INT8 and self.act_passes == 2:
            self._apply_two_pass(x, ldx, rows, y, ldy)
        elif self.icompute == COMPUTE_INT8:
            _active.quantize_act(x, ldx, rows, self.k, aq, ad, asum)
            act.rows, act.k, act.q, act.d, act.sum, act.skip_from = rows, self.k, aq, ad, asum, rows
            self._qgemm_i8(&act, y, ldy)
        elif self.icompute == COMPUTE_FP32:
            _active.qgemm_f32(&self.q, x, ldx, rows, y, ldy)
        else:
            _active.qgemm_bf16(&self.q, x, ldx, rows, y, ldy)
        if self.bias_ptr != NULL:
            for r in range(rows):
                for j in range(self.n):
                    y[r * ldy + j] += self.bias_ptr[j]

    cdef void _qgemm_i8(self, const lr_qact *act, float *y, int64_t ldy) noexcept nogil:
        if self.q.panels != NULL and _active.qgemm_i8_panels != NULL:
            _active.qgemm_i8_panels(&self.q, act, y, ldy)
            return
        if self.q.qs == NULL:
            with gil:
                self._ensure_canonical()
        _active.qgemm_i8(&self.q, act, y, ldy)

    cdef void _apply_two_pass(self, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy) noexcept nogil:
        cdef int64_t k = self.k, n = self.n, nb = self.k // LR_QK
        cdef int64_t r, m, r0 = 0, step = self.scratch.rows
        cdef lr_qact act
        # at most scratch.rows rows per weight pass
        while r0 < rows:
            m = min(step, rows - r0)
            # pass 1 rows [0, m); the residual x - dequant(pass 1) as rows [m, 2 m)
            _active.quantize_act(x + r0 * ldx, ldx, m, k, self.scratch.q, self.scratch.d, self.scratch.s)
            if m < PAR_ROWS:
                for r in range(m):
                    self._two_pass_residual(x + (r0 + r) * ldx, r)
            else:
                for r in prange(m, schedule="static"):
                    self._two_pass_residual(x + (r0 + r) * ldx, r)
            _active.quantize_act(self.scratch.r, k, m, k, self.scratch.q + m * k, self.scratch.d + m * nb, self.scratch.s + m * nb)
            act.rows, act.k, act.q, act.d, act.sum = 2 * m, k, self.scratch.q, self.scratch.d, self.scratch.s
            act.skip_from = m if self.residual_above > 0 else 2 * m   # the residual rows are sparse
            self._qgemm_i8(&act, self.scratch.y, n)
            if m < PAR_ROWS:
                for r in range(m):
                    self._two_pass_sum(y + (r0 + r) * ldy, r, m)
            else:
                for r in prange(m, schedule="static"):
                    self._two_pass_sum(y + (r0 + r) * ldy, r, m)
            r0 += m

    cdef void _two_pass_residual(self, const float *xr, int64_t r) noexcept nogil:
        """Scratch row r of the residual: x minus its first-pass int8 rounding, in the blocks whose
        step is over residual_above times the row's mean step (zero elsewhere)."""
        cdef int64_t k = self.k, nb = self.k // LR_QK, b, i
        cdef float db, above = 0.0
        if self.residual_above > 0:
            for b in range(nb):
                above += self.scratch.d[r * nb + b]
            above *= self.residual_above / nb
        for b in range(nb):
            db = self.scratch.d[r * nb + b]
            if db > above:
                for i in range(b * LR_QK, (b + 1) * LR_QK):
                    self.scratch.r[r * k + i] = xr[i] - db * self.scratch.q[r * k + i]
            else:
                for i in range(b * LR_QK, (b + 1) * LR_QK):
                    self.scratch.r[r * k + i] = 0.0

    cdef void _two_pass_sum(self, float *yr, int64_t r, int64_t m) noexcept nogil:
        cdef int64_t n = self.n, i
        for i in range(n):
            yr[i] = self.scratch.y[r * n + i] + self.scratch.y[(m + r) * n + i]

    cdef void row(self, int64_t j, float *out) noexcept nogil:
        """Row j of W as floats (embedding lookup); j must be in [0, n)."""
        cdef int64_t i, b, g, ng
        cdef float dd, mm
        cdef const uint8_t *qb
        cdef const int8_t *q8
        if self.ikind == KIND_F32:
            for i in range(self.k):
                out[i] = self.w32[j * self.k + i]
            return
        if self.ikind == KIND_F16:
            for i in range(self.k):
                out[i] = lr_f16_to_f32(self.w16[j * self.k + i])
            return
        if self.q.qs == NULL:
            # one row straight from the panels (an embedding tied to the head shares them)
            lr_panel_row(&self.q, j, out)
            return
        ng = self.k // self.q.group
        for b in range(self.k // LR_QK):
            g = (b * LR_QK) // self.q.group
            dd = self.q.d[j * ng + g]
            if self.q.bits == 4:
                mm = self.q.m[j * ng + g] if self.q.m != NULL else -8.0 * dd
                qb = self.q.qs + j * (self.k // 2) + b * (LR_QK // 2)
                for i in range(LR_QK // 2):
                    out[b * LR_QK + i] = dd * (qb[i] & 0x0f) + mm
                    out[b * LR_QK + i + LR_QK // 2] = dd * (qb[i] >> 4) + mm
            else:
                mm = self.q.m[j * ng + g] if self.q.m != NULL else 0.0
                q8 = <const int8_t *> self.q.qs + j * self.k + b * LR_QK
                for i in range(LR_QK):
                    out[b * LR_QK + i] = dd * q8[i] + mm

    def get_row(self, int64_t j):
        """Row j of W as float32 (dequantized)."""
        if j < 0 or j >= self.n:
            raise IndexError(f"row {j} out of range [0, {self.n})")
        cdef cnp.ndarray out = np.empty(self.k, dtype=np.float32)
        self.row(j, <float *> cnp.PyArray_DATA(out))
        return out

    def __call__(self, x):
        """Apply to rows of x: (rows, k) or (k,) float32 -> (rows, n) float32."""
        cdef cnp.ndarray xa = _rows_f32(x, self.k)
        cdef int64_t rows = xa.shape[0]
        cdef cnp.ndarray y = np.empty((rows, self.n), dtype=np.float32)
        cdef int64_t nb = (self.k + QK - 1) // QK
        cdef cnp.ndarray aq = np.empty(max(rows * self.k, 1), dtype=np.int8)
        cdef cnp.ndarray ad = np.empty(max(rows * nb, 1), dtype=np.float32)
        cdef cnp.ndarray asum = np.empty(max(rows * nb, 1), dtype=np.int32)
        if self.ikind == KIND_QUANT and self.icompute == COMPUTE_INT8 and self.k % QK:
            raise ValueError(f"int8 compute needs k to be a multiple of {QK}")
        with nogil:
            self.apply(<const float *> cnp.PyArray_DATA(xa), self.k, rows,
                       <float *> cnp.PyArray_DATA(y), self.n,
                       <int8_t *> cnp.PyArray_DATA(aq), <float *> cnp.PyArray_DATA(ad),
                       <int32_t *> cnp.PyArray_DATA(asum))
        return y


def _aligned_bytes(size_t nbytes):
    """A uint8 array of nbytes starting on a 64-byte boundary (one cache line per vector load)."""
    raw = np.empty(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes]


def quantize_activations(x):
    """Per-32 int8 quantization of activation rows with the active tier: (q, d, sums)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % QK:
        raise ValueError(f"activations must be (rows, k) with k a multiple of {QK}, got {x.shape}")
    cdef cnp.ndarray xa = np.ascontiguousarray(x)
    cdef int64_t rows = xa.shape[0], k = xa.shape[1]
    cdef cnp.ndarray q = np.empty((rows, k), dtype=np.int8)
    cdef cnp.ndarray d = np.empty((rows, k // QK), dtype=np.float32)
    cdef cnp.ndarray s = np.empty((rows, k // QK), dtype=np.int32)
    with nogil:
        _active.quantize_act(<const float *> cnp.PyArray_DATA(xa), k, rows, k,
                             <int8_t *> cnp.PyArray_DATA(q), <float *> cnp.PyArray_DATA(d),
                             <int32_t *> cnp.PyArray_DATA(s))
    return q, d, s


def silu_mul(gate_up):
    """Rows of [gate; up] (rows, 2*ff) -> silu(gate) * up (rows, ff) with the active tier."""
    arr = np.ascontiguousarray(gate_up, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] % 2:
        raise ValueError(f"gate_up must be (rows, 2*ff), got {arr.shape}")
    cdef cnp.ndarray gu = arr
    cdef int64_t rows = gu.shape[0], ff = gu.shape[1] // 2
    cdef cnp.ndarray out = np.empty((rows, ff), np.float32)
    with nogil:
        _active.silu_mul(<const float *> cnp.PyArray_DATA(gu), 2 * ff, rows, ff, <float *> cnp.PyArray_DATA(out), ff)
    return out


ACTIVATION_KINDS = {"silu": LR_ACT_SILU, "gelu": LR_ACT_GELU, "gelu_tanh": LR_ACT_GELU_TANH, "relu": LR_ACT_RELU}


def activate(x, str kind):
    """A plain MLP activation (silu | gelu | gelu_tanh | relu) of x with the active tier; returns a new
    float32 array of x's shape."""
    if kind not in ACTIVATION_KINDS:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATION_KINDS)}")
    cdef cnp.ndarray out = np.array(x, dtype=np.float32, order="C", copy=True)
    cdef int code = ACTIVATION_KINDS[kind]
    with nogil:
        _active.activate(<float *> cnp.PyArray_DATA(out), out.size, code)
    return out


def attention(q, k_cache, v_cache, int64_t pos0, int n_kv_head, float scale,
              int64_t kv_begin=0, int64_t window=0, alibi_slopes=None):
    """Causal attention of q (n_tok, n_head, head_dim) over caches (n_kv_head, ctx, head_dim)
    (float16 or float32) with the active tier; returns (n_tok, n_head, head_dim) float32."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim != 3:
        raise ValueError("q must be (n_tok, n_head, head_dim)")
    cdef int64_t n_tok = q.shape[0]
    cdef int n_head = q.shape[1], hd = q.shape[2]
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (np.float16, np.float32):
        raise TypeError("caches must both be float16 or both float32")
    if k_cache.shape != v_cache.shape or k_cache.ndim != 3 or k_cache.shape[0] != n_kv_head or k_cache.shape[2] != hd:
        raise ValueError(f"caches must be ({n_kv_head}, ctx, {hd})")
    if n_kv_head <= 0 or n_head % n_kv_head:
        raise ValueError("n_head must be a multiple of n_kv_head")
    cdef int64_t ctx = k_cache.shape[1]
    if pos0 < 0 or pos0 + n_tok > ctx or kv_begin < 0:
        raise ValueError("positions fall outside the cache")
    cdef cnp.ndarray kc = np.ascontiguousarray(k_cache)
    cdef cnp.ndarray vc = np.ascontiguousarray(v_cache)
    cdef cnp.ndarray qa = q
    cdef cnp.ndarray out = np.empty_like(q)
    cdef cnp.ndarray slopes
    cdef lr_attn_args a
    a.q = <const float *> cnp.PyArray_DATA(qa)
    a.q_stride = n_head * hd
    a.out = <float *> cnp.PyArray_DATA(out)
    a.out_stride = n_head * hd
    a.n_tok, a.pos0, a.n_head, a.n_kv_head, a.head_dim = n_tok, pos0, n_head, n_kv_head, hd
    a.kv_f16 = 1 if kc.dtype == np.float16 else 0
    a.k_cache = cnp.PyArray_DATA(kc)
    a.v_cache = cnp.PyArray_DATA(vc)
    a.ctx, a.kv_begin, a.window, a.scale = ctx, kv_begin, window, scale
    a.alibi_slopes = NULL
    if alibi_slopes is not None:
        slopes_obj = np.ascontiguousarray(alibi_slopes, dtype=np.float32)
        if slopes_obj.shape != (n_head,):
            raise ValueError(f"alibi_slopes must have {n_head} values")
        slopes = slopes_obj
        a.alibi_slopes = <const float *> cnp.PyArray_DATA(slopes)
    with nogil:
        _active.attention(&a)
    return out
