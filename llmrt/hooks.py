"""Research hooks: read and edit activations at TransformerLens's hook points.

A model's points are named as in TransformerLens (`blocks.3.attn.hook_pattern`, ...) so artefacts keyed
by those names (SAELens dictionaries, papers' code) carry over.  `hook_points` lists the points a
model's blocks really have; a `HookRunner` is what the engine calls at each point it marks
(`Engine.set_hooks`), running the user's functions and keeping the captured copies.  Without a runner
the engine runs exactly as before: one test of a NULL table per point.
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np

from llmrt._core.engine import BLOCK_POINTS, MODEL_POINTS
from llmrt.errors import HookError

HookFn = Callable[[np.ndarray, str], Union[np.ndarray, None]]
# names=...: None (everything), a name or glob pattern, a list of them, or a predicate on names
NameFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


def hook_points(engine: Any) -> list[tuple[str, int, int]]:
    """(name, table row, point index) of every hook point of engine's model, in forward order.  Points a
    block does not have are absent: no hook_resid_mid with a parallel residual, no ln1/ln2 with
    post-norm blocks, no hook_rot_q/k without rotary, no hook_pre_linear without a gated MLP."""
    spec, n = engine.spec, engine.n_layer
    post_norm = spec.norm_placement == "post"
    absent = set()
    if post_norm:
        absent |= {"ln1.hook_normalized", "ln2.hook_normalized"}
    if engine.rot_dim == 0:
        absent |= {"attn.hook_rot_q", "attn.hook_rot_k"}
    if spec.residual in ("parallel", "parallel_shared_norm"):
        absent.add("hook_resid_mid")
    if spec.residual == "parallel_shared_norm":
        absent.add("ln2.hook_normalized")
    if not spec.gated:
        absent.add("mlp.hook_pre_linear")
    points = [("hook_embed", n, MODEL_POINTS.index("hook_embed"))]
    if spec.positions == "learned":
        points.append(("hook_pos_embed", n, MODEL_POINTS.index("hook_pos_embed")))
    block = [(name, p) for p, name in enumerate(BLOCK_POINTS) if name not in absent]
    points += [(f"blocks.{l}.{name}", l, p) for l in range(n) for name, p in block]
    if spec.final_norm:
        points.append(("ln_final.hook_normalized", n, MODEL_POINTS.index("ln_final.hook_normalized")))
    points.append(("unembed.hook_out", n, MODEL_POINTS.index("unembed.hook_out")))
    return points


def select_names(all_names: list[str], names: NameFilter, what: str = "names") -> list[str]:
    """The names of all_names that `names` picks, in forward order; a name or pattern matching
    none of them is a HookError."""
    if names is None:
        return list(all_names)
    if callable(names):
        return [n for n in all_names if names(n)]
    patterns = [names] if isinstance(names, str) else list(names)
    picked: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise HookError(f"{what} must be hook names or glob patterns (str), got {pattern!r}")
        hits = fnmatch.filter(all_names, pattern)
        if not hits:
            raise HookError(f"this model has no hook point {pattern!r}; model.hook_names() lists them "
                            f"(e.g. {all_names[min(2, len(all_names) - 1)]!r})")
        picked.update(hits)
    return [n for n in all_names if n in picked]


def _label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class HookRunner:
    """What the engine calls at the points `table` marks: the hook functions of each point in the
    order given, then (for run_with_cache) a copy of the activation as they left it."""

    def __init__(self, engine: Any, fwd_hooks: Iterable[tuple[Any, HookFn]] = (), capture: NameFilter = ()):
        points = hook_points(engine)
        all_names = [name for name, _, _ in points]
        self._name_of = {(row, p): name for name, row, p in points}
        self.fns: dict[str, list[HookFn]] = {}
        for entry in fwd_hooks:
            if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1])):
                raise HookError(f"hooks must be (name or pattern, function) pairs, got {entry!r}")
            pattern, fn = entry
            for name in select_names(all_names, pattern, "hook names"):
                self.fns.setdefault(name, []).append(fn)
        self.capture = select_names(all_names, capture)
        self.captured: dict[str, list[np.ndarray]] = {name: [] for name in self.capture}
        self.table = np.zeros((engine.n_layer + 1, len(BLOCK_POINTS)), np.uint8)
        wanted = set(self.fns) | set(self.capture)
        for name, row, p in points:
            if name in wanted:
                self.table[row, p] = 1

    def edits(self, row: int, point: int) -> bool:
        """Whether hook functions (which may edit) run at the point, not only a capture."""
        return bool(self.fns.get(self._name_of.get((row, point)), ()))

    def fire(self, row: int, point: int, view: np.ndarray) -> None:
        name = self._name_of[(row, point)]
        for fn in self.fns.get(name, ()):
            self._call(fn, name, view)
        if name in self.captured:
            self.captured[name].append(np.array(view, dtype=np.float32))

    @staticmethod
    def _call(fn: HookFn, name: str, view: np.ndarray) -> None:
        arg = np.array(view)             # the hook's own copy: it may keep it or edit it in place
        try:
            result = fn(arg, name)
        except Exception as e:
            raise HookError(f"the hook {_label(fn)} on {name} raised {type(e).__name__}: {e}") from e
        new = arg if result is None else result
        if not isinstance(new, np.ndarray):
            raise HookError(f"the hook {_label(fn)} on {name} returned {type(new).__name__}; return a NumPy "
                            f"array of shape {view.shape} (or None to keep the activation)")
        if new.shape != view.shape:
            raise HookError(f"the hook {_label(fn)} on {name} returned shape {new.shape}, expected {view.shape}")
        if new.dtype.kind != "f":
            raise HookError(f"the hook {_label(fn)} on {name} returned dtype {new.dtype}, expected a float array")
        view[...] = new

    def cache(self) -> dict[str, np.ndarray]:
        """The captured activations, one array per name in forward order, the batch rows (one
        forward each) stacked along axis 0."""
        return {name: (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))
                for name, parts in self.captured.items() if parts}


@contextmanager
def installed(engine: Any, runner: HookRunner | None) -> Iterator[HookRunner | None]:
    """Hooks set on engine for the block; always removed (and the scratch shrunk) afterwards."""
    if runner is None:
        yield None
        return
    engine.set_hooks(runner)
    try:
        yield runner
    finally:
        engine.set_hooks(None)
