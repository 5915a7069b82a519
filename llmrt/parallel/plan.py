"""Which slice of every matrix one rank of a tensor-parallel group holds (Megatron-style).

Attention is split by heads: each rank owns whole KV groups (its query heads and their K/V heads)
or, when there are fewer KV heads than ranks, some query heads of one group and a copy of that
group's K/V head.  QKV and gate/up (or the plain MLP's input) are split by output rows; the
attention output and the MLP's down projection by input columns, so each rank's output is a
partial sum that one all-reduce completes.  The head is split by vocabulary rows (the logits are
gathered); the embedding, norms and OPT's projections stay whole on every rank.

Quantized matrices are cut at group boundaries only, so a rank's blocks are exactly the
single-process blocks (same scales, same int8 activation blocks): the split changes the order of
float additions, never the quantization."""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Iterator, Mapping

import numpy as np

from llmrt.blockspec import BlockSpec
from llmrt.config import ModelConfig, WeightOnlyQuantConfig
from llmrt.errors import UnsupportedError
from llmrt.formats import QK, QuantFormat
from llmrt.formats.resident import is_mapped

Range = tuple[int, int]

_LAYER = re.compile(r"layers\.(\d+)\.(\w+)\.(weight|bias)")
# output rows of a projection that reads the whole hidden state: split by rows
_ROW_SPLIT = {"q": "q", "k": "kv", "v": "kv", "gate": "ff", "up": "ff", "mlp_in": "ff"}
# a projection that reads a rank's own heads / MLP units: split by input columns, bias on rank 0
_COLUMN_SPLIT = {"attn_out": "att", "mlp_out": "ff"}
# rows of the vocabulary per rank are rounded to whole kernel panels
_VOCAB_ALIGN = 16


def split_units(n_units: int, parts: int, unit_width: int, align: int, what: str) -> list[Range]:
    """Cut n_units units (each unit_width columns wide) into `parts` non-empty runs, as even as the
    alignment allows: every cut falls on a multiple of `align` columns.  UnsupportedError naming
    `what` when no such cut exists."""
    if n_units < parts:
        raise UnsupportedError(f"{what}: {n_units} cannot be split over {parts} ranks (each rank needs at least "
                               f"one); run with at most {n_units} ranks")
    cuts = [0]
    for i in range(1, parts):
        ideal = i * n_units / parts
        lo, hi = cuts[-1] + 1, n_units - (parts - i)
        ok = [u for u in range(lo, hi + 1) if (u * unit_width) % align == 0]
        if not ok:
            raise UnsupportedError(
                f"{what}: {n_units} x {unit_width} columns cannot be cut over {parts} ranks at multiples of {align} "
                f"(the quantization group); use another number of ranks, a smaller group_size, or not_quant")
        cuts.append(min(ok, key=lambda u: (abs(u - ideal), u)))
    cuts.append(n_units)
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Rank `rank` of `size`: its query heads, K/V heads, MLP units and vocabulary rows."""
    rank: int
    size: int
    heads: Range          # query heads
    kv_heads: Range       # K/V heads (a copy when several ranks share one)
    ff: Range             # MLP intermediate units
    vocab: Range          # rows of the head
    vocab_splits: tuple[Range, ...]
    head_dim: int

    @classmethod
    def make(cls, cfg: ModelConfig, quant: WeightOnlyQuantConfig, rank: int, size: int) -> "ShardPlan":
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in a group of {size}")
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if size > nh:
            raise UnsupportedError(f"the model has {nh} attention heads and each rank needs one at least: run with at "
                                   f"most {nh} ranks (got {size})")
        align = _column_align(quant)
        group = nh // nkv
        if nkv >= size:
            # whole KV groups per rank
            g0, g1 = split_units(nkv, size, group * hd, align, f"the {nkv} key/value head groups")[rank]
            heads, kv = (g0 * group, g1 * group), (g0, g1)
        else:
            if size % nkv:
                raise UnsupportedError(
                    f"{nkv} key/value heads cannot be shared evenly by {size} ranks: the number of ranks must be a "
                    f"multiple of num_key_value_heads ({nkv}) or divide it")
            per = size // nkv
            g, sub = divmod(rank, per)
            h0, h1 = split_units(group, per, hd, align, f"the {group} query heads of a key/value head")[sub]
            if (g * group * hd) % align:
                raise UnsupportedError(f"the query heads of key/value head {g} start at column {g * group * hd}, "
                                       f"not a multiple of {align}; use another number of ranks or not_quant")
            heads, kv = (g * group + h0, g * group + h1), (g, g + 1)
        ff = split_units(cfg.intermediate_size, size, 1, align, f"the {cfg.intermediate_size} MLP units")[rank]
        vocab_splits = tuple(split_units(cfg.vocab_size, size, 1, 1 if cfg.vocab_size < size * _VOCAB_ALIGN
                                         else _VOCAB_ALIGN, f"the {cfg.vocab_size} vocabulary rows"))
        return cls(rank, size, heads, kv, ff, vocab_splits[rank], vocab_splits, hd)

    # ------------------------------------------------------------------ the block spec
    def block_spec(self, spec: BlockSpec) -> BlockSpec:
        """The spec of this rank's blocks: its heads (and their ALiBi slopes)."""
        slopes = None if spec.alibi_slopes is None else spec.alibi_slopes[self.heads[0]:self.heads[1]]
        return dataclasses.replace(spec, n_heads=self.heads[1] - self.heads[0],
                                   n_kv_heads=self.kv_heads[1] - self.kv_heads[0], alibi_slopes=slopes)

    # ------------------------------------------------------------------ the tensors
    def rows_of(self, part: str) -> Range:
        hd = self.head_dim
        return {"q": (self.heads[0] * hd, self.heads[1] * hd), "kv": (self.kv_heads[0] * hd, self.kv_heads[1] * hd),
                "ff": self.ff, "att": (self.heads[0] * hd, self.heads[1] * hd), "vocab": self.vocab}[part]

    def shard(self, name: str, arr: np.ndarray, fmt: QuantFormat | None, cfg: ModelConfig
              ) -> Iterator[tuple[str, np.ndarray, QuantFormat | None]]:
        """This rank's part of one stored tensor (none, the tensor whole, or a slice; a tied
        embedding also gives the head's rows).  A slice of a mapped file stays a view (its pages are
        read when the kernels' copy is made); a slice of an array in memory is copied, so the whole
        array can be freed."""
        mapped = is_mapped(arr)
        for out_name, part, out_fmt in self._parts(name, arr, fmt, cfg):
            if not mapped and part is not arr and part.base is not None:
                part = np.ascontiguousarray(part)
            yield out_name, part, out_fmt

    def _parts(self, name: str, arr: np.ndarray, fmt: QuantFormat | None, cfg: ModelConfig
               ) -> Iterator[tuple[str, np.ndarray, QuantFormat | None]]:
        if name == "embed":
            yield name, arr, fmt
            if cfg.tie_word_embeddings:
                yield "lm_head.weight", _rows(arr, self.vocab), fmt
            return
        if name in ("lm_head.weight", "lm_head.bias"):
            yield name, _rows(arr, self.vocab), fmt
            return
        m = _LAYER.fullmatch(name)
        if m is None:
            yield name, arr, fmt             # norms, positions, projections: whole on every rank
            return
        part, kind = m.group(2), m.group(3)
        if part in _ROW_SPLIT:
            yield name, _rows(arr, self.rows_of(_ROW_SPLIT[part])), fmt
        elif part == "qkv":
            yield name, self._qkv_rows(arr, cfg), fmt
        elif part in _COLUMN_SPLIT:
            if kind == "weight":
                yield name, _columns(arr, fmt, self.rows_of(_COLUMN_SPLIT[part]), name), fmt
            elif self.rank == 0:
                yield name, arr, fmt         # the bias of a summed output is added once
        else:
            yield name, arr, fmt             # norms

    def _qkv_rows(self, arr: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        hd, nh, nkv = self.head_dim, cfg.num_heads, cfg.num_kv_heads
        q0, q1 = self.rows_of("q")
        k0, k1 = self.rows_of("kv")
        base_k, base_v = nh * hd, (nh + nkv) * hd
        return np.concatenate([arr[q0:q1], arr[base_k + k0:base_k + k1], arr[base_v + k0:base_v + k1]])

    def shard_all(self, items: Iterable[tuple[str, np.ndarray, QuantFormat | None]], cfg: ModelConfig
                  ) -> Iterator[tuple[str, np.ndarray, QuantFormat | None]]:
        for name, arr, fmt in items:
            yield from self.shard(name, arr, fmt, cfg)

    def shard_mapping(self, tensors: Mapping[str, tuple[np.ndarray, QuantFormat | None]], cfg: ModelConfig
                      ) -> dict[str, tuple[np.ndarray, QuantFormat | None]]:
        return {n: (a, f) for n, a, f in self.shard_all(((n, a, f) for n, (a, f) in tensors.items()), cfg)}


def _column_align(quant: WeightOnlyQuantConfig) -> int:
    """Columns a cut must fall on: whole quantization groups (and the kernels' 32-input blocks)."""
    if quant.not_quant:
        return 1
    return max(QK, quant.group_size if quant.group_size > 0 else QK)


def _rows(arr: np.ndarray, r: Range) -> np.ndarray:
    return arr[r[0]:r[1]]


def _columns(arr: np.ndarray, fmt: QuantFormat | None, c: Range, name: str) -> np.ndarray:
    """Input columns [c0, c1) of a matrix: dense, grouped blocks (whole groups) or per-channel
    blocks (one block per row, its bytes cut; the row's scale is unchanged)."""
    if arr.ndim == 1:
        return arr
    if fmt is None:
        return arr[:, c[0]:c[1]]
    k = fmt.row_len(arr)
    if fmt.group_size == -1:
        if c[0] % QK or c[1] % QK:
            raise UnsupportedError(f"{name}: columns {c[0]}..{c[1]} do not fall on {QK}-input blocks")
        out = np.empty(arr.shape, fmt.dtype_for(c[1] - c[0]))
        for field in out.dtype.names:
            if field == "qs":
                per = fmt.bits / 8
                out["qs"] = arr["qs"][..., int(c[0] * per):int(c[1] * per)]
            else:
                out[field] = arr[field]
        return out
    g = fmt.block_len(k)
    if c[0] % g or c[1] % g:
        raise UnsupportedError(f"{name}: columns {c[0]}..{c[1]} do not fall on its quantization groups of {g}; "
                               f"use another number of ranks or a smaller group_size")
    return arr[:, c[0] // g:c[1] // g]
