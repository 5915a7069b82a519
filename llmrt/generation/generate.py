"""generate(): from a model and prompts to tokens, the way transformers and neural-speed do it.

Steps: resolve the options; split the (left-padded) batch into rows; give each row a KV sequence
(fresh, or the model's conversation when interactive); feed the prompts; run greedy / sampling
or beam search; lay the result out like transformers."""
from __future__ import annotations

from typing import Any

import numpy as np

from llmrt.generation.beam import beam_search
from llmrt.generation.callbacks import StoppingCheck, StreamerHook
from llmrt.generation.kv_policy import ContextPolicy, Sequence
from llmrt.generation.options import GenerationOptions, resolve_options
from llmrt.generation.output import GenerateOutput
from llmrt.generation.pipeline import LogitsPipeline
from llmrt.generation.search import sample_search
from llmrt.generation.session import Session
from llmrt.generation.tokens import TokenTable, as_id_batch, split_rows
from llmrt.runtime import check_kv_memory, compute_threads


def generate(model: Any, input_ids: Any = None, generation_config: Any = None, logits_processor: Any = None,
             stopping_criteria: Any = None, *, streamer: Any = None, attention_mask: Any = None,
             threads: int | None = None, interactive: bool = False, ignore_prompt: bool = False,
             session: Session | None = None, whole_conversation: bool = False,
             **kwargs: Any) -> np.ndarray | GenerateOutput:
    """See Model.generate.  `session` carries the conversation when interactive;
    whole_conversation: the input repeats the conversation so far (chat templates)."""
    tp = getattr(model.engine, "tp", None)
    if streamer is not None and tp is not None and not tp.is_root:
        streamer = _Unheard()             # tensor parallelism: only rank 0 streams
    hook = StreamerHook(streamer) if streamer is not None else None
    try:
        return _generate(model, input_ids, generation_config, logits_processor, stopping_criteria, hook,
                         attention_mask, threads, interactive, ignore_prompt, session, whole_conversation, kwargs)
    finally:
        if hook is not None:
            hook.end()          # even on errors: a TextIteratorStreamer's reader must not wait forever


def _generate(model: Any, input_ids: Any, generation_config: Any, logits_processor: Any, stopping_criteria: Any,
              hook: StreamerHook | None, attention_mask: Any, threads: int | None, interactive: bool,
              ignore_prompt: bool, session: Session | None, whole_conversation: bool,
              kwargs: dict) -> np.ndarray | GenerateOutput:
    if "inputs" in kwargs:
        if input_ids is not None:
            raise TypeError("pass input_ids or inputs, not both")
        input_ids = kwargs.pop("inputs")
    opts = resolve_options(model.generation_defaults, generation_config, kwargs)
    if input_ids is None:
        if opts.bos_token_id is None:
            raise ValueError("no input_ids, and the model has no bos_token_id to start from")
        input_ids = [[opts.bos_token_id]]
    ids = as_id_batch(input_ids)
    rows, pad_widths = split_rows(ids, attention_mask, opts.pad_token_id, opts.eos_ids)
    beams = opts.num_beams > 1
    if hook is not None and beams:
        raise ValueError("a streamer cannot be used with beam search (as in transformers); set num_beams=1")
    if interactive and len(rows) != 1:
        raise ValueError("interactive generation continues one conversation: pass a single prompt")
    expand = 1 if beams else opts.num_return_sequences
    if interactive and expand > 1:
        raise ValueError("interactive generation returns one sequence: num_return_sequences must be 1")
    if session is None and interactive:
        raise ValueError("interactive generation needs the model's session")
    width = ids.shape[1]
    max_new, min_new = opts.new_tokens_bounds(width)
    pipeline = LogitsPipeline(opts, min_new, logits_processor)
    stop = StoppingCheck(stopping_criteria)
    # under tensor parallelism an unseeded sampler draws rank 0's entropy on every rank
    tp = getattr(model.engine, "tp", None)
    rng = np.random.default_rng(opts.seed if opts.seed is not None or tp is None else tp.seed())
    padded = np.repeat(ids, expand, axis=0)
    widths = np.repeat(pad_widths, expand)
    skip_prompt = getattr(hook.streamer, "skip_prompt", False) if hook is not None else False

    with compute_threads(threads):
        starts, feeds = _sequences(model, opts, rows, max_new, interactive, session, whole_conversation)
        if hook is not None and not (ignore_prompt and not skip_prompt):
            hook.put(padded)            # transformers' protocol: the prompt first (a streamer may skip it)
        first = np.stack([s.feed(f) if f else _last_logits(s) for s, f in zip(starts, feeds)])
        if max_new == 0:
            return _finish(opts, padded, width, ignore_prompt, [], [], None, None)
        if expand > 1:                  # sampled return sequences: one sequence per copy
            starts = [s if k == 0 else s.fork() for s in starts for k in range(expand)]
            first = np.repeat(first, expand, axis=0)
        table = TokenTable(padded, widths)
        if beams:
            beam_max = _beam_length(opts, starts, max_new)
            begin = [s.fork() for s in starts] if interactive else starts
            res = beam_search(begin, first, table, opts=opts, pipeline=pipeline, max_new=beam_max, stop=stop,
                              rng=rng)
            if interactive:
                n_gen = int((res.beam_indices[0] != -1).sum())
                session.end([int(t) for t in res.sequences[0, width:width + n_gen]], fed=0)
            return _finish(opts, res.sequences, width, ignore_prompt, res.scores, res.logits,
                           res.sequences_scores, res.beam_indices)
        res = sample_search(starts, first, table, opts=opts, pipeline=pipeline, max_new=max_new, stop=stop,
                            streamer=hook, rng=rng)
        if interactive:
            new = [int(t) for t in table.row(0)[len(rows[0]):]]
            session.end(new, fed=len(new) - 1)          # the last token was never run
        return _finish(opts, table.padded(), width, ignore_prompt, res.scores, res.logits, None, None)


class _Unheard:
    """The streamer of a tensor-parallel rank other than 0: what rank 0 shows, nobody else does."""
    def put(self, value: Any) -> None:
        pass

    def end(self) -> None:
        pass


def _sequences(model: Any, opts: GenerationOptions, rows: list[np.ndarray], max_new: int, interactive: bool,
               session: Session | None, whole_conversation: bool) -> tuple[list[Sequence], list[list[int]]]:
    """A KV sequence per row and the tokens it still has to be fed."""
    longest = max(r.size for r in rows)
    policy = _policy(model, opts, longest, max_new, interactive)

    need = longest + (max_new if max_new >= 0 else 0) + 1
    copies = max(opts.num_beams, opts.num_return_sequences)     # beams and samples fork the cache
    kept = (max_new if max_new >= 0 else policy.ctx_size) * (int(bool(opts.output_scores)) + int(bool(opts.output_logits)))
    check_kv_memory(model.config, len(rows) * copies, min(need, policy.ctx_size), model.memory_dtype, kept)

    def new_sequence(p: ContextPolicy) -> Sequence:
        return Sequence(model.engine, model.memory_dtype, p, capacity=need)

    if interactive:
        seq, feed = session.begin([int(t) for t in rows[0]], policy, new_sequence, whole_conversation,
                                  reusable=not model.engine.spec.prefix_tokens)
        starts, feeds = [seq], [feed]
    else:
        if session is not None:
            session.reset()                 # a non-interactive call ends the conversation (neural-speed)
        starts, feeds = [new_sequence(policy) for _ in rows], [[int(t) for t in r] for r in rows]
    if not policy.streaming:
        for s, f in zip(starts, feeds):
            have = len(s.tokens) + len(f)
            if have >= policy.ctx_size:
                raise ValueError(f"the prompt has {have} tokens, more than ctx_size={policy.ctx_size} allows "
                                 f"(at least one new token must fit); raise ctx_size")
            if max_new >= 0 and have + max_new > policy.ctx_size:
                raise ValueError(f"prompt ({have}) + max_new_tokens ({max_new}) exceeds ctx_size={policy.ctx_size}; "
                                 f"raise ctx_size, lower max_new_tokens, or pass n_keep / shift_roped_k=True")
    return starts, feeds


def _policy(model: Any, opts: GenerationOptions, longest: int, max_new: int, interactive: bool) -> ContextPolicy:
    if opts.ctx_size is not None:
        ctx = opts.ctx_size
    elif opts.streaming or interactive or max_new < 0:
        ctx = int(model.config.max_position_embeddings)
    else:
        ctx = longest + max(max_new, 1)     # room for one token even when none is asked for
    if opts.streaming and model.engine.spec.prefix_tokens:
        raise ValueError("this model (ChatGLM-6B) counts its 2D positions from the prompt's context, which "
                         "StreamingLLM would drop or move: n_keep / n_discard / shift_roped_k are not available; "
                         "raise ctx_size instead")
    if opts.shift_roped_k and not model.engine.shifts.can_shift_keys:
        raise ValueError("shift_roped_k moves cached keys to new positions, which this model's learned "
                         "positions do not allow; use re-evaluation (n_keep / n_discard) instead")
    return ContextPolicy(ctx_size=max(ctx, 2), streaming=opts.streaming,
                         n_keep=0 if opts.n_keep is None else opts.n_keep,
                         n_discard=-1 if opts.n_discard is None else opts.n_discard,
                         shift_roped_k=opts.shift_roped_k)


def _beam_length(opts: GenerationOptions, starts: list[Sequence], max_new: int) -> int:
    if max_new >= 0:
        return max_new
    if opts.streaming:
        raise ValueError("beam search needs max_new_tokens >= 0 when the context streams (n_keep / shift_roped_k)")
    return min(s.policy.ctx_size - len(s.tokens) for s in starts)


def _last_logits(seq: Sequence) -> np.ndarray:
    """Nothing new to feed (the input repeats what the cache holds): reuse, or recompute the last token."""
    if seq.last_logits is not None:
        return seq.last_logits
    last = seq.tokens[-1]
    seq.truncate(len(seq.tokens) - 1)
    return seq.feed([last])


def _finish(opts: GenerationOptions, sequences: np.ndarray, width: int, ignore_prompt: bool, scores: list,
            logits: list, sequences_scores: np.ndarray | None,
            beam_indices: np.ndarray | None) -> np.ndarray | GenerateOutput:
    seqs = np.ascontiguousarray(sequences[:, width:] if ignore_prompt else sequences, dtype=np.int64)
    if not opts.return_dict_in_generate:
        return seqs
    return GenerateOutput(sequences=seqs,
                          scores=tuple(scores) if opts.output_scores else None,
                          logits=tuple(logits) if opts.output_logits else None,
                          sequences_scores=sequences_scores if opts.output_scores else None,
                          beam_indices=beam_indices)
