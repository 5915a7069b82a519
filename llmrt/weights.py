"""From internal tensors to a running Engine: choose a storage format per tensor (quantize),
then fuse QKV / gate-up rows and hand kernel-layout arrays to the Cython engine."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

import numpy as np

from llmrt._core.embedding import Embedder
from llmrt._core.engine import Engine
from llmrt._core.layer import Layer
from llmrt._kernels._ops import Linear
from llmrt.config import ModelConfig, WeightOnlyQuantConfig
from llmrt.errors import ConfigError, InvalidArgumentError, LlmrtError, ModelFileError
from llmrt.formats import KernelWeights, QuantFormat

if TYPE_CHECKING:
    from llmrt.parallel import ShardPlan, TensorParallel

# tensors that are matrices of a linear layer (quantizable)
_LINEAR = re.compile(r"(layers\.\d+\.(q|k|v|qkv|attn_out|gate|up|mlp_in|mlp_out)|project_in|project_out)\.weight")

_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")

Stored = tuple[np.ndarray, "QuantFormat | None"]


def storage_format(name: str, arr: np.ndarray, cfg: ModelConfig, q: WeightOnlyQuantConfig) -> QuantFormat | None:
    """The format a tensor is stored in: None means dense (fp32, or fp16 for large embeddings)."""
    if q.not_quant or arr.ndim != 2:
        return None
    head = name == "lm_head.weight" or (name == "embed" and cfg.tie_word_embeddings)
    if head:
        if q.head_dtype == "fp32":
            return None
        return QuantFormat(q.head_dtype, "sym", 32 if arr.shape[1] % 32 == 0 else -1, q.scale_dtype)
    if _LINEAR.fullmatch(name):
        if arr.shape[1] % 32:
            return None          # the int8 kernels work in blocks of 32 inputs
        group = q.group_size if q.group_size != -1 else -1
        if group != -1 and arr.shape[1] % group:
            raise InvalidArgumentError(f"group_size {group} does not divide the {arr.shape[1]} inputs of {name}; "
                                       f"choose a group size that divides it or -1 (per channel)")
        return QuantFormat(q.weight_dtype, q.alg, group, q.scale_dtype)
    return None


def quantize_stream(tensors: Iterable[tuple[str, np.ndarray]], cfg: ModelConfig,
                    q: WeightOnlyQuantConfig) -> Iterator[tuple[str, np.ndarray, QuantFormat | None]]:
    """Quantize tensors one at a time (peak memory: one tensor in fp32 plus its blocks)."""
    for name, arr in tensors:
        arr = np.asarray(arr)
        fmt = storage_format(name, arr, cfg, q)
        if fmt is not None:
            yield name, fmt.quantize(np.ascontiguousarray(arr, dtype=np.float32)), fmt
        elif name == "embed" and not q.not_quant:
            yield name, np.ascontiguousarray(arr, dtype=np.float16), None
        else:
            yield name, np.ascontiguousarray(arr, dtype=np.float32), None


def fuse_rows(parts: list[Stored]):
    """Kernel-layout weights of the row-concatenation of several stored matrices (fused QKV,
    gate-up): a dense float array, or KernelWeights."""
    fmts = [f for _, f in parts]
    if all(f is None for f in fmts):
        arrs = [a for a, _ in parts]
        if all(a.dtype == np.float16 for a in arrs):
            return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
        return np.asarray(arrs[0], np.float32) if len(arrs) == 1 else np.concatenate(
            [np.asarray(a, np.float32) for a in arrs])
    if any(f is None for f in fmts):
        raise ValueError("cannot fuse quantized and dense matrices into one layer")
    ks = [f.to_kernel(a) for a, f in parts]
    _check_fusable({k.bits for k in ks}, {k.group for k in ks})
    if len(ks) == 1:
        return ks[0]
    b = ks[0].bits
    ms = None
    if any(k.m is not None for k in ks):
        # a matrix without offsets gets its implicit ones (int4: -8d, int8: 0)
        ms = np.concatenate([k.m if k.m is not None else (-8.0 * k.d if b == 4 else np.zeros_like(k.d))
                             for k in ks]).astype(np.float32)
    return KernelWeights(np.concatenate([k.qs for k in ks]), np.concatenate([k.d for k in ks]), ms, b, ks[0].group)


def linear_from(w, compute: str, bias: np.ndarray | None = None, panels: bool = True) -> Linear:
    """A Linear over kernel-layout weights; several Linears may share the same arrays."""
    if isinstance(w, np.ndarray):
        return Linear.dense(w, bias)
    return Linear.quantized(w.qs, w.d, w.m, w.bits, w.group, bias=bias, compute=compute, panels=panels)


def make_linear(parts: list[Stored], compute: str, bias: np.ndarray | None = None) -> Linear:
    """The Linear of the row-concatenation of stored matrices.  Under int8 compute quantized parts
    are repacked into panels straight from their block records (no canonical or concatenated copy:
    the repack is most of a load)."""
    fmts = [f for _, f in parts]
    if compute != "int8" or any(f is None for f in fmts):
        return linear_from(fuse_rows(parts), compute, bias)
    views = [f.kernel_view(a) for a, f in parts]
    bits, groups = {f.bits for f in fmts}, {v[3] for v in views}
    _check_fusable(bits, groups)
    return Linear.from_parts([v[:3] for v in views], bits.pop(), groups.pop(), bias)


def _check_fusable(bits: set[int], groups: set[int]) -> None:
    if len(bits) != 1 or len(groups) != 1:
        raise ValueError("matrices fused into one layer must share bit width and group size; "
                         f"got bits {sorted(bits)} groups {sorted(groups)}")


def _bias(t: Mapping[str, Stored], *names: str) -> np.ndarray | None:
    present = [t[n][0] for n in names if n in t]
    if not present:
        return None
    if len(present) != len(names):
        raise ModelFileError(f"the checkpoint has biases for some but not all of {', '.join(names)}; "
                             f"it may be truncated or of another architecture")
    return np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in present])


def _need(t: Mapping[str, Stored], name: str) -> Stored:
    try:
        return t[name]
    except KeyError:
        raise ModelFileError(f"the checkpoint has no weight for {name!r}; it may be truncated or of another "
                             f"architecture") from None


def _dense(t: Mapping[str, Stored], name: str) -> np.ndarray | None:
    if name not in t:
        return None
    # a copy: a view would keep the mapped file's pages around the vector resident (see done())
    return np.array(t[name][0], dtype=np.float32)


def _check_against_config(cfg: ModelConfig, t: Mapping[str, Stored]) -> None:
    """The weights agree with the config on the number of layers and on the head."""
    layers = {int(m.group(1)) for m in map(_LAYER_INDEX.match, t) if m}
    found = max(layers) + 1 if layers else 0
    if found != cfg.num_layers:
        raise ConfigError(f"the config declares {cfg.num_layers} layers (num_hidden_layers / block_count) but the "
                          f"checkpoint has tensors for {found}; the config does not belong to these weights")
    if not cfg.tie_word_embeddings and "lm_head.weight" not in t:
        raise ModelFileError("the checkpoint has no output head (lm_head.weight) although the config says it is "
                             "not tied to the embedding (tie_word_embeddings false); it may be truncated, or set "
                             "tie_word_embeddings true if the model reuses its embedding")


@contextmanager
def _mismatch_is_config_error() -> Iterator[None]:
    """Shape checks of the Cython layers raise plain ValueErrors: here they mean the checkpoint does
    not fit its config."""
    try:
        yield
    except ValueError as exc:
        if isinstance(exc, LlmrtError):
            raise
        raise ConfigError(f"the checkpoint does not fit its config: {exc}") from exc


def build_engine(cfg: ModelConfig, t: Mapping[str, Stored], compute: str, head_compute: str | None = None,
                 two_pass: str = "int8", max_chunk: int = 128,
                 release: Callable[[Iterable[np.ndarray]], None] | None = None,
                 row_release: Callable[[list], tuple[Callable[[int, int], None], int] | None] | None = None,
                 tp: "TensorParallel | None" = None, plan: "ShardPlan | None" = None) -> Engine:
    """The engine of a model from its stored tensors.  release(arrays), if given, is called with the
    stored arrays of each part once its Linears are built (mapped files give their pages back);
    row_release(planes) (formats.row_release) sets up the row-wise release of an untied embedding.
    tp, plan: one rank of a tensor-parallel group and its ShardPlan; t then holds that rank's slices
    (plan.shard_mapping), the head's rows under "lm_head.weight" even when tied.
    The config is validated here, the one place every load path (HF, GGUF, .llmrt) goes through."""
    cfg.validate()
    _check_against_config(cfg, t)
    with _mismatch_is_config_error():
        return _build_engine(cfg, t, compute, head_compute, two_pass, max_chunk, release, row_release, tp, plan)


def _build_engine(cfg: ModelConfig, t: Mapping[str, Stored], compute: str, head_compute: str | None, two_pass: str,
                  max_chunk: int, release: Callable[[Iterable[np.ndarray]], None] | None,
                  row_release: Callable[[list], tuple[Callable[[int, int], None], int] | None] | None,
                  tp: "TensorParallel | None" = None, plan: "ShardPlan | None" = None) -> Engine:
    def done(prefix: str) -> None:
        # by now each array is repacked or copied (norms, biases), or a dense matrix read in place,
        # whose pages come back when read
        if release is not None:
            release([a for name, (a, f) in t.items() if name.startswith(prefix)])

    # the head and the embedding first: repacking the head is the largest transient of a load,
    # best taken while nothing else is resident
    head_compute = head_compute or compute
    # a rank's head is its rows of the vocabulary: the embedding stays whole beside it
    untied = not cfg.tie_word_embeddings or plan is not None
    embed_part, embed_w = _need(t, "embed"), None
    if not untied:
        # one Linear is the head and the embedding, which reads its rows from the head's panels (or planes):
        # packed like the layers, straight from the stored blocks (no converted copy beside the panels)
        lm_head = embed = make_linear([embed_part], head_compute, _bias(t, "lm_head.bias"))
    else:
        embed_w = fuse_rows([embed_part])
        embed = linear_from(embed_w, compute, panels=False)   # read a row at a time: canonical layout
        lm_head = make_linear([t["lm_head.weight"]], head_compute, _bias(t, "lm_head.bias"))
    head_rows = cfg.vocab_size if plan is None else plan.vocab[1] - plan.vocab[0]
    if lm_head.n != head_rows:
        raise ConfigError(f"the output head has {lm_head.n} rows but the config's vocab_size is {cfg.vocab_size}"
                          + ("" if plan is None else f" ({head_rows} of them on this rank)"))
    done("lm_head.")
    done("embed")
    layers = []
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        if p + "qkv.weight" in t:
            qkv = make_linear([_need(t, p + "qkv.weight")], compute, _bias(t, p + "qkv.bias"))
        else:
            qkv = make_linear([_need(t, p + n + ".weight") for n in "qkv"], compute,
                              _bias(t, p + "q.bias", p + "k.bias", p + "v.bias"))
        attn_out = make_linear([_need(t, p + "attn_out.weight")], compute, _bias(t, p + "attn_out.bias"))
        if cfg.mlp == "gated_silu":
            mlp_in = make_linear([_need(t, p + "gate.weight"), _need(t, p + "up.weight")], compute,
                                 _bias(t, p + "gate.bias", p + "up.bias"))
        else:
            mlp_in = make_linear([_need(t, p + "mlp_in.weight")], compute, _bias(t, p + "mlp_in.bias"))
        mlp_out = make_linear([_need(t, p + "mlp_out.weight")], compute, _bias(t, p + "mlp_out.bias"))
        layers.append(Layer(qkv, attn_out, mlp_in, mlp_out,
                            _dense(t, p + "attn_norm.weight"), _dense(t, p + "attn_norm.bias"),
                            _dense(t, p + "mlp_norm.weight"), _dense(t, p + "mlp_norm.bias")))
        done(p)
    spec = cfg.block_spec() if plan is None else plan.block_spec(cfg.block_spec())
    project_in = make_linear([t["project_in.weight"]], compute) if "project_in.weight" in t else None
    project_out = make_linear([t["project_out.weight"]], compute) if "project_out.weight" in t else None
    positions = linear_from(fuse_rows([_need(t, "pos_embed")]), compute, panels=False) \
        if spec.positions == "learned" else None
    embedder = Embedder(embed, cfg.hidden_size, max_chunk, project_in=project_in, positions=positions,
                        position_offset=spec.position_offset, norm_w=_dense(t, "emb_norm.weight"),
                        norm_b=_dense(t, "emb_norm.bias"), norm_eps=spec.norm_eps)
    engine = Engine(hidden=cfg.hidden_size, spec=spec, layers=layers, embedder=embedder, lm_head=lm_head,
                    final_norm_w=_dense(t, "final_norm.weight"), final_norm_b=_dense(t, "final_norm.bias"),
                    project_out=project_out, max_chunk=max_chunk,
                    two_pass={"int8": "none", "auto": "down", "high": "all"}[two_pass],
                    tp=tp, vocab_splits=None if plan is None else plan.vocab_splits)
    done("")   # the rest: the final norm, project_*, pos_embed
    if untied and row_release is not None:
        # an untied embedding is only read a row at a time: give its pages back as they are read
        planes = [embed_w] if isinstance(embed_w, np.ndarray) else [embed_w.qs, embed_w.d, embed_w.m]
        found = row_release(planes)
        if found is not None:
            embedder.release_rows(*found)
    return engine
