"""Model: load (HF dir, GGUF, llmrt file), quantize, save, forward, generate and chat."""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmrt import formats, lens
from llmrt.config import ModelConfig, WeightOnlyQuantConfig
from llmrt.errors import InvalidArgumentError, UnsupportedError
from llmrt import generation
from llmrt.formats.json_files import read_hf_config
from llmrt.generation import GenerateOutput, Session, as_id_batch
from llmrt.generation.finite import check_logits
from llmrt.hooks import HookFn, HookRunner, NameFilter, hook_points, installed
from llmrt.hub import resolve_model_path
from llmrt.models import family_by_name, family_for_gguf, family_for_hf
from llmrt.parallel import ShardPlan, TensorParallel, connect
from llmrt.runtime import check_kv_memory, compute_threads, share_cores
from llmrt.validation import named_source
from llmrt.weights import Stored, build_engine, quantize_stream

FILE_KIND = "llmrt-causal-lm"
DEFAULT_CHUNK = 128      # as fast as 512-row chunks on the 110M and 1.1B shapes, a quarter of the scratch
MAX_CHUNK = 4096
# Checking the .llmrt data checksums (crc32 per tensor) reads the whole file: measured on a 701 MB 1.1B
# file on 2 shared cores, 0.43-0.49 s on a 2.4-3.2 s warm load (15-18%) and 0.7-1.2 s on a 3.4-4.5 s
# cold one, over the 10% budget, so it is opt-in (verify=True).  The table, the header and the
# preamble are checked on every open; a tiny model's check costs about 1 ms either way.
VERIFY_DEFAULT = False


@dataclass
class CausalLMOutput:
    """Like transformers' CausalLMOutputWithPast, with NumPy arrays."""

    logits: np.ndarray
    hidden_states: tuple[np.ndarray, ...] | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class _Source:
    """Where the weights came from, to key caches and to describe the model."""

    kind: str                       # hf | gguf | llmrt
    path: str
    identity: str                   # content-derived id of the source weights
    extra: dict = field(default_factory=dict)


def _serialized(method):
    """Run under the model's lock: the engine's scratch buffers, the KV session and the lazily rebuilt
    weights are per model, so concurrent calls from Python threads on one model take turns (and give
    exactly the sequential results); different models still run in parallel."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class Model:
    """A causal language model ready to run on the CPU kernels.

    Thread safety: one model may be shared between Python threads; its calls (forward, generate,
    chat) are serialized by a per-model lock."""

    def __init__(self, config: ModelConfig, quant: WeightOnlyQuantConfig, tensors: dict[str, Stored],
                 source: _Source, memory_dtype: str | None = None, max_chunk: int = DEFAULT_CHUNK,
                 tp: TensorParallel | None = None, plan: ShardPlan | None = None):
        """tp: this process's tensor-parallel group (parallel.connect), or None; plan: its ShardPlan
        when tensors already hold only this rank's slices (else they are cut here)."""
        self.config = config
        self.quant_config = quant
        self.source = source
        # fp32 end to end keeps an fp32 cache unless asked otherwise (f16 alone moves logits ~4e-4)
        self.memory_dtype = memory_dtype or ("f32" if quant.not_quant else "f16")
        self.tp = tp
        if tp is not None and plan is None:
            plan = _plan(config, quant, tp)
            tensors = plan.shard_mapping(tensors, config)
        self._tensors = tensors
        self.engine = build_engine(config, tensors, quant.compute_dtype, quant.head_compute,
                                   two_pass=quant.activation_precision, release=formats.drop_resident_pages,
                                   row_release=formats.row_release, max_chunk=max_chunk, tp=tp, plan=plan)
        self._session = Session()           # the conversation kept by interactive generate() / chat()
        self._lock = threading.RLock()      # re-entrant: a streamer or processor may call back in
        self._generation_defaults: dict | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, quantization_config: WeightOnlyQuantConfig | None = None,
                        *, load_in_4bit: bool = False, load_in_8bit: bool = False, gguf_file: str | None = None,
                        compute_dtype: str | None = None, use_cache: bool | None = None,
                        cache_dir: str | os.PathLike | None = None, memory_dtype: str | None = None,
                        max_chunk: int = DEFAULT_CHUNK, trust_remote_code: bool = False,
                        progress: bool = True, verify: bool = VERIFY_DEFAULT, tensor_parallel: Any = False) -> "Model":
        """Load a Hugging Face checkpoint (quantizing it), a GGUF file or an llmrt model file.

        tensor_parallel: True or "mpi" splits the model over the ranks of MPI's world (start the
        script with `mpiexec -n N`; each rank holds 1/N of every attention and MLP matrix), or an
        mpi4py communicator to split it over; a world of one process runs the model whole.

        memory_dtype: the KV cache's element type, "f16" or "f32" (default: f32 for not_quant models,
        f16 otherwise); max_chunk: prompt tokens run through the layers at once (the engine's
        scratch holds that many rows); verify: check the tensor data checksums of an llmrt file
        (the file passed, or the use_cache file of a Hugging Face directory), see load()."""
        if memory_dtype not in (None, "f16", "f32"):
            raise InvalidArgumentError(f"memory_dtype must be 'f16' or 'f32', got {memory_dtype!r}")
        if isinstance(max_chunk, bool) or not isinstance(max_chunk, int) or not 1 <= max_chunk <= MAX_CHUNK:
            raise InvalidArgumentError(f"max_chunk must be an int from 1 to {MAX_CHUNK}, got {max_chunk!r}")
        for name, flag in (("load_in_4bit", load_in_4bit), ("load_in_8bit", load_in_8bit),
                           ("trust_remote_code", trust_remote_code), ("progress", progress)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{name} must be True or False, got {flag!r}")
        if use_cache is not None and not isinstance(use_cache, bool):
            raise InvalidArgumentError(f"use_cache must be True, False or None, got {use_cache!r}")
        q = _choose_quant(quantization_config, load_in_4bit, load_in_8bit, compute_dtype)
        tp = connect(tensor_parallel)
        path = resolve_model_path(name_or_path, gguf_file)
        if gguf_file is not None:
            path = path / gguf_file if path.is_dir() else path
        if path.is_file():
            # stored weights are used as they are; how they run comes from the config
            run = q.runtime_options()
            if formats.is_llmrt_file(path):
                return cls.load(path, memory_dtype=memory_dtype, max_chunk=max_chunk, verify=verify, tp=tp,
                                **(run if quantization_config or compute_dtype else {}))
            if formats.is_gguf_file(path):
                return cls.from_gguf(path, memory_dtype=memory_dtype, max_chunk=max_chunk, tp=tp, **run)
            raise formats.ModelFileError(f"{path} is neither a GGUF file nor an llmrt model file "
                                         f"(pass a Hugging Face model directory, a .gguf or a .llmrt file)")
        if not path.is_dir():
            raise FileNotFoundError(f"no model at {path}")
        return cls._from_hf_dir(path, q, use_cache=q.use_cache if use_cache is None else use_cache,
                                cache_dir=cache_dir, memory_dtype=memory_dtype, max_chunk=max_chunk,
                                progress=progress and (tp is None or tp.is_root), verify=verify, tp=tp)

    @classmethod
    def _from_hf_dir(cls, path: Path, q: WeightOnlyQuantConfig, *, use_cache: bool, cache_dir, memory_dtype: str | None,
                     max_chunk: int, progress: bool, verify: bool = VERIFY_DEFAULT,
                     tp: TensorParallel | None = None) -> "Model":
        hf = read_hf_config(path)
        family = family_for_hf(hf["model_type"])
        config = family.config_from_hf(hf, path / "config.json")
        identity = formats.checkpoint_identity(path)
        source = _Source("hf", str(path), identity, {"model_type": hf["model_type"]})
        cache_path = None
        if use_cache and tp is not None:
            # rank 0 writes the cache file (if it has none yet), then every rank maps its slices of it
            cache_path = _cache_file(cache_dir, identity, q)
            if tp.is_root and not cache_path.is_file():
                stream = family.map_hf_tensors(config, formats.iter_checkpoint(path, progress=progress))
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                _write_model_file(cache_path, config, q, source, quantize_stream(stream, config, q))
            tp.barrier()
            return cls.load(cache_path, memory_dtype=memory_dtype, max_chunk=max_chunk, verify=verify, tp=tp,
                            **q.runtime_options())
        if use_cache:
            cache_path = _cache_file(cache_dir, identity, q)
            if cache_path.is_file():
                try:
                    return cls.load(cache_path, memory_dtype=memory_dtype, max_chunk=max_chunk, verify=verify,
                                    **q.runtime_options())
                except formats.ModelFileError:
                    cache_path.unlink()          # a stale or damaged cache is rebuilt, never trusted
        stream = family.map_hf_tensors(config, formats.iter_checkpoint(path, progress=progress))
        quantized = quantize_stream(stream, config, q)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            _write_model_file(cache_path, config, q, source, quantized)
            # just written from the checkpoint: nothing to verify
            return cls.load(cache_path, memory_dtype=memory_dtype, max_chunk=max_chunk, verify=False,
                            **q.runtime_options())
        plan = None if tp is None else _plan(config, q, tp)
        if plan is not None:            # keep only this rank's slices of each tensor as it is quantized
            quantized = plan.shard_all(quantized, config)
        tensors = {name: (arr, fmt) for name, arr, fmt in quantized}
        return cls(config, q, tensors, source, memory_dtype, max_chunk, tp=tp, plan=plan)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, *, compute_dtype: str = "int8", memory_dtype: str | None = None,
                  max_chunk: int = DEFAULT_CHUNK, tp: TensorParallel | None = None, **runtime: Any) -> "Model":
        """Run a llama.cpp GGUF file; its Q4_0/Q4_1/Q8_0/F16/F32 tensors are used as stored."""
        gg = formats.GGUFFile(path)
        meta = gg.metadata
        arch = meta.get("general.architecture")
        if arch is None:
            raise formats.ModelFileError(f"{path}: GGUF metadata has no general.architecture")
        family = family_for_gguf(arch)
        meta = dict(meta, __tensor_names__=tuple(gg.tensor_names))
        config = family.config_from_gguf(meta, path)
        tensors = {}
        for name, arr, fmt in family.map_gguf_tensors(config, gg.iter_tensors()):
            tensors[name] = (arr, fmt)
        kinds = sorted({f.name for _, f in tensors.values() if f is not None})
        q = WeightOnlyQuantConfig(weight_dtype="int8" if kinds == ["q8_0"] else "int4",
                                  compute_dtype=compute_dtype, **runtime)
        source = _Source("gguf", str(path), gg.identity(), {"architecture": arch, "formats": kinds})
        model = cls(config, q, tensors, source, memory_dtype, max_chunk, tp=tp)
        model._gguf = gg
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, *, compute_dtype: str | None = None, memory_dtype: str | None = None,
             max_chunk: int = DEFAULT_CHUNK, verify: bool = VERIFY_DEFAULT, tp: TensorParallel | None = None,
             **runtime: Any) -> "Model":
        """Open an llmrt model file written by save() (memory-mapped).

        verify: check every tensor's crc32 (ModelFileError naming the tensor on a mismatch). The table
        (shapes, extents, header checksums) is always checked; the data check reads the whole file
        once (about 2 GB/s, 15-18% of a 1.1B model's load), so it is off by default (VERIFY_DEFAULT)."""
        meta, arrays, fmts = formats.load_model_file(path, verify=verify)
        if meta.get("kind") != FILE_KIND:
            raise formats.ModelFileError(f"{path} is an llmrt file of kind {meta.get('kind')!r}, not a causal LM")
        src = _metadata_object(path, meta, "source")
        if not all(isinstance(src.get(k), str) for k in ("kind", "path", "identity")) or \
                not isinstance(src.get("extra", {}), dict):
            raise formats.ModelFileError(f"{path}: the metadata's source entry is malformed; re-save the model")
        with named_source(str(path)):
            config = ModelConfig.from_dict(_metadata_object(path, meta, "config"))
            family_by_name(config.family)
            q = WeightOnlyQuantConfig.from_dict(_metadata_object(path, meta, "quant"))
        if compute_dtype is not None or runtime:
            q = WeightOnlyQuantConfig.from_dict({**q.to_dict(), **runtime,
                                                 **({"compute_dtype": compute_dtype} if compute_dtype else {})})
        source = _Source(src["kind"], src["path"], src["identity"], src.get("extra", {}))
        tensors = {name: (arrays[name], fmts.get(name)) for name in arrays}
        return cls(config, q, tensors, source, memory_dtype, max_chunk, tp=tp)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the (quantized) model to one llmrt file; refuses to replace a file unless overwrite."""
        if self.tp is not None:
            raise UnsupportedError("a tensor-parallel rank holds only its slices of the weights: save the model from "
                                   "a process loaded without tensor_parallel")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        _write_model_file(path, self.config, self.quant_config, self.source,
                          ((n, a, f) for n, (a, f) in self._tensors.items()))
        return path

    # ------------------------------------------------------------------ running
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def new_cache(self, ctx_size: int):
        """An empty KV cache holding up to ctx_size tokens (for engine.forward)."""
        if isinstance(ctx_size, bool) or not isinstance(ctx_size, (int, np.integer)) or ctx_size < 1:
            raise InvalidArgumentError(f"ctx_size must be a positive integer, got {ctx_size!r}")
        check_kv_memory(self.config, 1, int(ctx_size), self.memory_dtype)
        return self.engine.new_cache(int(ctx_size), self.memory_dtype)

    @_serialized
    def __call__(self, input_ids: Any, output_hidden_states: bool = False, threads: int | None = None,
                 check_finite: bool = True, **_: Any) -> CausalLMOutput:
        """Logits for every position: (batch, seq, vocab) float32.  NaN or inf in them raises
        NonFiniteLogitsError unless check_finite=False."""
        return self._forward(input_ids, output_hidden_states, threads, check_finite)

    def _forward(self, input_ids: Any, output_hidden_states: bool, threads: int | None,
                 check_finite: bool) -> CausalLMOutput:
        ids = as_id_batch(input_ids)
        logits = np.empty((ids.shape[0], ids.shape[1], self.vocab_size), np.float32)
        hidden: list[list[np.ndarray]] = []
        with compute_threads(threads):
            for b in range(ids.shape[0]):
                cache = self.new_cache(max(ids.shape[1], 1))
                hs: list | None = [] if output_hidden_states else None
                self.engine.forward(cache, ids[b], all_logits=True, hidden_states=hs, out=logits[b])
                if hs is not None:
                    hidden.append(hs)
        if check_finite:
            check_logits(logits)
        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(np.stack([hidden[b][i] for b in range(ids.shape[0])])
                                  for i in range(self.config.num_layers + 1))
        return CausalLMOutput(logits=logits, hidden_states=hidden_states)

    forward = __call__

    # ------------------------------------------------------------------ research hooks
    def hook_names(self) -> list[str]:
        """This model's hook points (TransformerLens's names), in forward order."""
        return [name for name, _, _ in hook_points(self.engine)]

    @_serialized
    def run_with_hooks(self, input_ids: Any, fwd_hooks: list[tuple[Any, HookFn]] = (), *,
                       threads: int | None = None, check_finite: bool = True) -> np.ndarray:
        """Logits (batch, seq, vocab) float32 of a forward pass in which each fn(activation, name) of
        fwd_hooks [(name or glob pattern or predicate, fn), ...] runs at its hook points; an array it
        returns (same shape) replaces the activation for the rest of the pass, None keeps it (edits
        made in place to the array it was given count)."""
        runner = HookRunner(self.engine, fwd_hooks)
        with installed(self.engine, runner):
            return self._forward(input_ids, False, threads, check_finite).logits

    @_serialized
    def run_with_cache(self, input_ids: Any, names: NameFilter = None, *,
                       fwd_hooks: list[tuple[Any, HookFn]] = (), threads: int | None = None,
                       check_finite: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits, cache): cache maps each hook point names picks (None: all; names, glob patterns
        such as "blocks.*.hook_resid_post", or a predicate) to a float32 array, in forward order, as
        TransformerLens shapes it: (batch, pos, d_model), (batch, pos, head, d_head) for q/k/v/z,
        (batch, head, query, key) for attn_scores / pattern.  fwd_hooks run before the capture."""
        runner = HookRunner(self.engine, fwd_hooks, names)
        with installed(self.engine, runner):
            logits = self._forward(input_ids, False, threads, check_finite).logits
        return logits, runner.cache()

    @_serialized
    def unembed(self, resid: Any) -> np.ndarray:
        """The logit lens: the final norm and head applied to residual-stream vectors (..., hidden)
        -> logits (..., vocab) float32."""
        self._whole_model_only("the logit lens")
        return lens.unembed(self.engine, resid)

    def _whole_model_only(self, what: str) -> None:
        if self.tp is not None:
            raise UnsupportedError(f"{what} needs the whole model, and a tensor-parallel rank holds only its slices; "
                                   f"load the model without tensor_parallel")

    @_serialized
    def direct_logit_attribution(self, cache: dict[str, np.ndarray], tokens: Any, position: int = -1) -> np.ndarray:
        """Each attention head's direct contribution to the logit of tokens (one id, or one per batch
        row) at position: (batch, layer, head) float32, from the cache's hook_z of every block and its
        last hook_resid_post (the final norm's scale is taken from that residual, as TransformerLens's
        apply_ln_to_stack does)."""
        self._whole_model_only("direct logit attribution")
        return lens.head_attribution(self.engine, cache, tokens, position)

    @property
    def generation_defaults(self) -> dict:
        """What generate() uses unless told otherwise: the model's special tokens and, for a Hugging
        Face directory, its generation_config.json (like transformers' model.generation_config)."""
        if self._generation_defaults is None:
            self._generation_defaults = generation.model_defaults(self.config, self.source.kind, self.source.path)
        return dict(self._generation_defaults)

    @_serialized
    def generate(self, input_ids: Any = None, generation_config: Any = None, logits_processor: Any = None,
                 stopping_criteria: Any = None, *, streamer: Any = None, attention_mask: Any = None,
                 threads: int | None = None, interactive: bool = False, ignore_prompt: bool = False,
                 hooks: list[tuple[Any, Any]] | None = None, **kwargs: Any) -> np.ndarray | GenerateOutput:
        """Continue each prompt row, like transformers' generate; returns (batch, prompt + new) int64
        (or a GenerateOutput with return_dict_in_generate=True).

        Options (keyword arguments or a transformers.GenerationConfig): max_new_tokens (-1: until EOS
        or the context's end), max_length, min_new_tokens, min_length, do_sample, temperature, top_k,
        top_p, min_p, typical_p, repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty,
        early_stopping, num_return_sequences, eos_token_id (int or list), pad_token_id, seed,
        output_scores, output_logits, return_dict_in_generate, check_finite (NaN / inf logits or scores
        raise NonFiniteLogitsError unless False); the context: ctx_size, n_keep (-1: the
        whole prompt), n_discard (-1: half), shift_roped_k.  Ragged batches: left padding with an
        attention_mask; each row comes out as if generated alone.  logits_processor /
        stopping_criteria: transformers' lists, called with torch tensors when torch is installed.
        interactive=True keeps the KV cache for the next call (which then processes only new tokens);
        a call with interactive=False ends that conversation.  ignore_prompt=True returns new tokens only.
        hooks: [(name or pattern, fn), ...] as for run_with_hooks, run on every forward pass (the
        prompt's and each new token's)."""
        with installed(self.engine, self._hook_runner(hooks)):
            return generation.generate(self, input_ids, generation_config, logits_processor, stopping_criteria,
                                       streamer=streamer, attention_mask=attention_mask, threads=threads,
                                       interactive=interactive, ignore_prompt=ignore_prompt,
                                       session=self._session, **kwargs)

    def _hook_runner(self, fwd_hooks: Any) -> HookRunner | None:
        return None if not fwd_hooks else HookRunner(self.engine, fwd_hooks)

    @_serialized
    def chat(self, messages: list[dict], tokenizer: Any, *, streamer: Any = None, threads: int | None = None,
             chat_template: str | None = None, hooks: list[tuple[Any, Any]] | None = None, **kwargs: Any) -> str:
        """Answer the last message of a conversation ([{"role": ..., "content": ...}, ...]) through the
        tokenizer's chat template (ChatML when it has none); returns the reply text.  The KV cache is
        kept between turns, so a turn processes only what the cache does not hold yet.  Generation
        options as for generate() (max_new_tokens defaults to 512, less if the context is nearly full);
        hooks as for generate()."""
        ids = generation.chat_input_ids(messages, tokenizer, chat_template)
        if "max_new_tokens" not in kwargs:          # 512, or what the context still holds
            streaming = any(kwargs.get(k) not in (None, False) for k in ("n_keep", "n_discard", "shift_roped_k"))
            room = (kwargs.get("ctx_size") or self.config.max_position_embeddings) - len(ids)
            kwargs["max_new_tokens"] = 512 if streaming else max(1, min(512, room))
        if "eos_token_id" not in kwargs:
            eos = generation.GenerationOptions(eos_token_id=self.generation_defaults.get("eos_token_id")).eos_ids
            kwargs["eos_token_id"] = generation.stop_tokens(tokenizer, eos)
        with installed(self.engine, self._hook_runner(hooks)):
            out = generation.generate(self, [ids], streamer=streamer, threads=threads, interactive=True,
                                      ignore_prompt=True, session=self._session, whole_conversation=True, **kwargs)
        new = out.sequences if isinstance(out, GenerateOutput) else out
        return tokenizer.decode([int(t) for t in new[0]], skip_special_tokens=True)

    @_serialized
    def reset_conversation(self) -> None:
        """Forget the conversation kept by interactive generate() / chat()."""
        self._session.reset()

    def describe(self) -> dict:
        return {"family": self.config.family, "source": self.source.kind, "path": self.source.path,
                "quant": self.quant_config.to_dict(),
                "weights_bytes": sum(int(a.nbytes) for a, _ in self._tensors.values())}


def _plan(config: ModelConfig, quant: WeightOnlyQuantConfig, tp: TensorParallel) -> ShardPlan:
    """This rank's slices; the ranks on this machine share its cores (threads per rank)."""
    config.validate()
    share_cores(tp.local_ranks())
    return ShardPlan.make(config, quant, tp.rank, tp.size)


def _choose_quant(qc: WeightOnlyQuantConfig | None, load_in_4bit: bool, load_in_8bit: bool,
                  compute_dtype: str | None) -> WeightOnlyQuantConfig:
    if sum(bool(x) for x in (qc is not None, load_in_4bit, load_in_8bit)) > 1:
        raise ValueError("pass only one of quantization_config, load_in_4bit, load_in_8bit")
    if qc is None:
        if load_in_8bit:
            qc = WeightOnlyQuantConfig(weight_dtype="int8", group_size=32, compute_dtype="int8")
        else:      # load_in_4bit, and the default: int4 sym g32 with int8 compute (the fast path)
            qc = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8")
    elif isinstance(qc, dict):
        qc = WeightOnlyQuantConfig.from_dict(qc)
    elif not isinstance(qc, WeightOnlyQuantConfig):
        qc = _from_transformers_quant_config(qc)
    if compute_dtype is not None:
        qc = WeightOnlyQuantConfig.from_dict(dict(qc.to_dict(), compute_dtype=compute_dtype))
    return qc


def _metadata_object(path: str | os.PathLike, meta: dict, key: str) -> dict:
    """meta[key] of an llmrt file, which must be a JSON object."""
    value = meta.get(key)
    if not isinstance(value, dict):
        raise formats.ModelFileError(f"{path}: the metadata has no {key!r} object; the file is damaged or was not "
                                     f"written by llmrt's save(); re-save or re-quantize the model")
    return value


def _from_transformers_quant_config(qc: Any) -> WeightOnlyQuantConfig:
    """A transformers BitsAndBytesConfig-like object asking for 4 or 8 bits: llmrt's int4 / int8 defaults
    (its other knobs are GPU kernel choices); anything else is refused by name."""
    bits = [b for b, attr in ((4, "load_in_4bit"), (8, "load_in_8bit")) if getattr(qc, attr, False) is True]
    if len(bits) != 1:
        raise InvalidArgumentError(f"quantization_config must be a WeightOnlyQuantConfig, a dict of its options or "
                                   f"a config with load_in_4bit / load_in_8bit, got {qc!r}")
    return _choose_quant(None, bits[0] == 4, bits[0] == 8, None)


def _cache_file(cache_dir, identity: str, q: WeightOnlyQuantConfig) -> Path:
    root = Path(cache_dir) if cache_dir else Path(os.environ.get("LLMRT_CACHE", Path.home() / ".cache" / "llmrt"))
    return root / f"{identity}-{q.weights_key()}.llmrt"


def _write_model_file(path: Path, config: ModelConfig, q: WeightOnlyQuantConfig, source: _Source,
                      tensors: Iterator[tuple[str, np.ndarray, Any]]) -> None:
    meta = {"kind": FILE_KIND, "config": config.to_dict(), "quant": q.to_dict(),
            "source": {"kind": source.kind, "path": source.path, "identity": source.identity, "extra": source.extra}}
    with formats.ModelFileWriter(path) as w:
        for name, arr, fmt in tensors:
            w.add(name, arr, fmt)
        w.finish(meta)


def content_hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]
