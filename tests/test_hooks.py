"""Research hooks (run_with_cache, run_with_hooks, generate(hooks=...)) against transformers: every hook
point of every family's representative config equals the matching tensor of transformers' forward
(torch module hooks, output_attentions, the KV cache), and the same edits give the same logits and
greedy tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILY_REPRESENTATIVES, TINY_CONFIGS, max_rel_err
from test_chat import char_tokenizer  # noqa: F401  (a fixture)
from llmrt import AutoModelForCausalLM, HookError, WeightOnlyQuantConfig

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")
TOL = 1e-4

# Where each hook point lives in transformers' modules: the first candidate path that exists, and
# whether the point is that module's input ("in") or output ("out").  Paths are inside a block unless
# listed under MODEL_MODULES.
BLOCK_MODULES = {
    "ln1.hook_normalized": (["input_layernorm", "ln_1", "norm_1", "ln_attn", "self_attn_layer_norm"], "out"),
    "ln2.hook_normalized": (["post_attention_layernorm", "ln_2", "norm_2", "ln_mlp", "final_layer_norm"], "out"),
    "hook_resid_mid": (["post_attention_layernorm", "ln_2", "norm_2", "final_layer_norm"], "in"),
    "attn.hook_z": (["self_attn.o_proj", "attention.dense", "attn.out_proj", "self_attention.dense",
                     "self_attn.out_proj", "attn.c_proj"], "in"),
    "hook_attn_out": (["self_attn.o_proj", "attention.dense", "attn.out_proj", "self_attention.dense",
                       "self_attn.out_proj", "attn.c_proj"], "out"),
    "mlp.hook_pre": (["mlp.act_fn", "mlp.act", "ffn.act", "mlp.gelu_impl", "activation_fn"], "in"),
    "mlp.hook_pre_linear": (["mlp.up_proj"], "out"),
    "mlp.hook_post": (["mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc_out", "ffn.down_proj", "fc2", "mlp.c_proj"], "in"),
    "hook_mlp_out": (["mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc_out", "ffn.down_proj", "fc2", "mlp.c_proj"], "out"),
}
MODEL_MODULES = {
    "hook_embed": (["model.decoder.project_in", "model.embed_tokens", "model.decoder.embed_tokens", "gpt_neox.embed_in",
                    "transformer.wte", "transformer.word_embeddings"], "out"),
    "hook_pos_embed": (["transformer.wpe", "model.decoder.embed_positions"], "out"),
    "ln_final.hook_normalized": (["model.norm", "gpt_neox.final_layer_norm", "transformer.ln_f", "transformer.norm_f",
                                  "model.decoder.final_layer_norm"], "out"),
}
SEPARATE_QKV = (["self_attn.q_proj", "attn.q_proj"], ["self_attn.k_proj", "attn.k_proj"],
                ["self_attn.v_proj", "attn.v_proj"])
FUSED_QKV = ["attention.query_key_value", "self_attention.query_key_value", "attn.Wqkv", "attn.c_attn"]


def _module(root, paths: list[str]):
    for p in paths:
        try:
            m = root.get_submodule(p)
        except AttributeError:
            continue
        if m is not None:
            return m
    return None


def _blocks(ref) -> torch.nn.ModuleList:
    return next(m for _, m in ref.named_modules() if isinstance(m, torch.nn.ModuleList))


def _split_fused(name: str, ref, out: torch.Tensor, nh: int, nkv: int, hd: int):
    """q, k, v (batch, pos, heads, d_head) from a fused projection's output, in each family's layout."""
    b, p = out.shape[:2]
    family = TINY_CONFIGS[name][0]
    if family == "gpt_neox" or (family == "gpt_bigcode" and not ref.config.multi_query):
        per_head = out.view(b, p, nh, 3 * hd)
        return per_head[..., :hd], per_head[..., hd:2 * hd], per_head[..., 2 * hd:]
    if family == "bloom" or (family == "falcon" and not ref.config.new_decoder_architecture
                             and not ref.config.multi_query):
        per_head = out.view(b, p, nh, 3, hd)
        return per_head[..., 0, :], per_head[..., 1, :], per_head[..., 2, :]
    if family == "falcon" and ref.config.new_decoder_architecture:
        grouped = out.view(b, p, nkv, nh // nkv + 2, hd)
        return grouped[..., :-2, :].reshape(b, p, nh, hd), grouped[..., -2, :], grouped[..., -1, :]
    if family == "mpt" and ref.config.attn_config.clip_qkv:
        out = out.clamp(-ref.config.attn_config.clip_qkv, ref.config.attn_config.clip_qkv)
    q, k, v = out.split([nh * hd, nkv * hd, nkv * hd], dim=-1)        # mpt, gpt_bigcode, falcon multi-query
    return q.view(b, p, nh, hd), k.view(b, p, nkv, hd), v.view(b, p, nkv, hd)


# transformers' eager Falcon scales ALiBi by 1/sqrt(d_head) and its default sdpa path does not (their
# logits differ by ~0.08 on falcon-rw-alibi); llmrt follows the default path (test_parity), so this
# config is compared with the sdpa model, whose patterns transformers does not return: there the
# pattern is checked through hook_z (= pattern @ V, both compared) instead.
NO_TORCH_PATTERNS = {"falcon-rw-alibi"}


def _eager_twin(name: str, path, ref):
    """The same transformers model with eager attention, the only kind that returns its patterns."""
    if name in NO_TORCH_PATTERNS:
        return ref
    return type(ref).from_pretrained(path, attn_implementation="eager").float().eval()


def _torch_activations(name: str, ref, ids: np.ndarray, our_names: list[str], nh: int, nkv: int, hd: int):
    """name -> transformers' tensor (as NumPy) for each of our hook points it has a module for (ref
    must run eager attention)."""
    got: dict[str, np.ndarray] = {}
    handles = []

    def keep(key, kind):
        def hook(module, args, kwargs_or_out, *rest):
            if kind == "in":
                t = args[0] if args else kwargs_or_out["hidden_states"]
            else:
                t = rest[0] if rest else kwargs_or_out
                t = t[0] if isinstance(t, tuple) else t
            got[key] = t.detach().numpy().copy()
        return hook

    def attach(module, key, kind):
        if kind == "in":
            handles.append(module.register_forward_pre_hook(keep(key, "in"), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(keep(key, "out")))

    blocks = _blocks(ref)
    post_ln = TINY_CONFIGS[name][0] == "opt" and not ref.config.do_layer_norm_before
    for l, block in enumerate(blocks):
        attach(block, f"blocks.{l}.hook_resid_pre", "in")
        attach(block, f"blocks.{l}.hook_resid_post", "out")
        for point, (paths, kind) in BLOCK_MODULES.items():
            if point == "hook_resid_mid" and post_ln:
                paths, kind = ["self_attn_layer_norm"], "out"     # post-LN: the norm's output is the residual
            m = _module(block, paths)
            if m is not None and f"blocks.{l}.{point}" in our_names:
                attach(m, f"blocks.{l}.{point}", kind)
        mods = [_module(block, p) for p in SEPARATE_QKV]
        if all(m is not None for m in mods):
            for point, m in zip(("q", "k", "v"), mods):
                attach(m, f"blocks.{l}.attn.raw_{point}", "out")
        else:
            attach(_module(block, FUSED_QKV), f"blocks.{l}.attn.raw_qkv", "out")
    for point, (paths, kind) in MODEL_MODULES.items():
        m = _module(ref, paths)
        if m is not None and point in our_names:
            attach(m, point, kind)
    try:
        with torch.no_grad():
            out = ref(torch.from_numpy(ids), output_attentions=name not in NO_TORCH_PATTERNS, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    b, p = ids.shape
    for l in range(len(blocks)):
        if f"blocks.{l}.attn.raw_qkv" in got:
            qkv = _split_fused(name, ref, torch.from_numpy(got.pop(f"blocks.{l}.attn.raw_qkv")), nh, nkv, hd)
        else:
            qkv = [torch.from_numpy(got.pop(f"blocks.{l}.attn.raw_{x}")) for x in "qkv"]
            qkv = [t.view(b, p, -1, hd) for t in qkv]
        for x, t in zip("qkv", qkv):
            got[f"blocks.{l}.attn.hook_{x}"] = t.numpy()
        if name not in NO_TORCH_PATTERNS:
            got[f"blocks.{l}.attn.hook_pattern"] = out.attentions[l].numpy()
        got[f"blocks.{l}.attn.hook_z"] = got[f"blocks.{l}.attn.hook_z"].reshape(b, p, nh, hd)
        layer = out.past_key_values.layers[l]
        got[f"blocks.{l}.cache_k"] = layer.keys.numpy()
        got[f"blocks.{l}.cache_v"] = layer.values.numpy()
    got["unembed.hook_out"] = out.logits.numpy()
    return got


def _as_cache_layout(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Our (batch, pos, kv_head, d_head) keys or values as transformers caches them: (batch, head, pos,
    d_head), heads repeated where it stores them expanded, the last positions where it keeps a window."""
    t = ours.transpose(0, 2, 1, 3)
    if theirs.shape[1] != t.shape[1]:
        t = np.repeat(t, theirs.shape[1] // t.shape[1], axis=1)
    return t[:, :, t.shape[2] - theirs.shape[2]:]


@pytest.fixture(scope="module")
def fp32(tiny_models):
    models: dict = {}

    def get(name: str):
        if name not in models:
            path, ref = tiny_models(name)
            models[name] = (AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32"),
                            _eager_twin(name, path, ref))
        return models[name]
    return get


def _prompt(vocab: int, n: int = 11, seed: int = 3, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, n))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_hook_point_matches_transformers(fp32, name):
    model, ref = fp32(name)
    e = model.engine
    ids = _prompt(model.vocab_size)
    names = model.hook_names()
    logits, cache = model.run_with_cache(ids)
    assert list(cache) == names                        # everything, in forward order
    assert all(a.dtype == np.float32 for a in cache.values())
    np.testing.assert_array_equal(logits, model(ids).logits)     # capturing changes nothing
    theirs = _torch_activations(name, ref, ids, names, e.n_head, e.n_kv_head, e.head_dim)
    compared = set()
    for key in names:
        if key in theirs:
            want = theirs[key]
            if want.shape != cache[key].shape and want.shape[-1] == cache[key].shape[-1]:
                # OPT runs its MLP on (batch * pos, d) rows; learned positions broadcast over the batch
                want = (want.reshape(cache[key].shape) if want.size == cache[key].size
                        else np.broadcast_to(want, cache[key].shape))
            assert cache[key].shape == want.shape, key
            err = max_rel_err(cache[key], want)
            assert err <= TOL, f"{key}: relative error {err:.2e}"
            compared.add(key)
    for l in range(e.n_layer):
        rot_k = cache.get(f"blocks.{l}.attn.hook_rot_k", cache[f"blocks.{l}.attn.hook_k"])
        for ours, kv in ((rot_k, "k"), (cache[f"blocks.{l}.attn.hook_v"], "v")):
            want = theirs[f"blocks.{l}.cache_{kv}"]
            assert max_rel_err(_as_cache_layout(ours, want), want) <= TOL, (l, kv)
        compared.add(f"blocks.{l}.attn.hook_rot_k")
        # what transformers never shows: the rotated queries (a rotation keeps each head's norm and
        # the pattern above is their softmax with the checked keys) and the pre-softmax scores
        if f"blocks.{l}.attn.hook_rot_q" in cache:
            q, rq = cache[f"blocks.{l}.attn.hook_q"], cache[f"blocks.{l}.attn.hook_rot_q"]
            np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-4, atol=1e-5)
            assert not np.allclose(rq[:, 1:], q[:, 1:])
            compared.add(f"blocks.{l}.attn.hook_rot_q")
        # the pattern weighs the values into z (which transformers' output projection takes)
        pattern, v = cache[f"blocks.{l}.attn.hook_pattern"], cache[f"blocks.{l}.attn.hook_v"]
        v = np.repeat(v, e.n_head // e.n_kv_head, axis=2)
        np.testing.assert_allclose(np.einsum("bhqk,bkhd->bqhd", pattern, v), cache[f"blocks.{l}.attn.hook_z"],
                                   rtol=1e-4, atol=1e-5)
        compared.add(f"blocks.{l}.attn.hook_pattern")
        s = cache[f"blocks.{l}.attn.hook_attn_scores"]
        e_s = np.exp(s - s.max(-1, keepdims=True))
        np.testing.assert_allclose(e_s / e_s.sum(-1, keepdims=True), cache[f"blocks.{l}.attn.hook_pattern"], atol=1e-6)
        assert np.isneginf(s[..., 0, 1:]).all()          # the first query sees only the first key
        compared.add(f"blocks.{l}.attn.hook_attn_scores")
    assert compared >= set(names), f"not compared: {sorted(set(names) - compared)}"


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_absent_points_are_absent(fp32, name):
    model, _ = fp32(name)
    names, spec = set(model.hook_names()), model.engine.spec
    assert ("blocks.0.hook_resid_mid" in names) == (spec.residual == "sequential")
    assert ("blocks.0.mlp.hook_pre_linear" in names) == spec.gated
    assert ("blocks.0.attn.hook_rot_q" in names) == (spec.rotary_dim > 0)
    assert ("hook_pos_embed" in names) == (spec.positions == "learned")


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_quantized_activations_are_those_of_the_dequantized_twin(tiny_models, name):
    from test_parity import _dequantized_twin
    path, _ = tiny_models(name)
    q = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="fp32")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, memory_dtype="f32")
    twin = _dequantized_twin(model)
    ids = _prompt(model.vocab_size, batch=1)
    _, got = model.run_with_cache(ids)
    _, want = twin.run_with_cache(ids)
    assert list(got) == list(want)
    for key in got:
        g, w = got[key], want[key]
        if key.endswith("hook_attn_scores"):             # masked scores are -inf in both
            np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w))
            g, w = np.where(np.isneginf(g), 0, g), np.where(np.isneginf(w), 0, w)
        assert max_rel_err(g, w) <= TOL, key


def _out_proj(ref, l: int):
    return _module(_blocks(ref)[l], BLOCK_MODULES["attn.hook_z"][0])


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_head_ablation_matches_the_same_edit_in_torch(fp32, name):
    model, ref = fp32(name)
    hd, head, layer = model.engine.head_dim, 1, model.engine.n_layer - 1
    ids = _prompt(model.vocab_size)

    def ablate_ours(z, hook_name):
        z[:, :, head] = 0.0
        return z

    def ablate_theirs(module, args):
        x = args[0].clone()
        x[..., head * hd:(head + 1) * hd] = 0.0
        return (x,) + args[1:]

    got = model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate_ours)])
    handle = _out_proj(ref, layer).register_forward_pre_hook(ablate_theirs)
    try:
        with torch.no_grad():
            want = ref(torch.from_numpy(ids)).logits.numpy()
    finally:
        handle.remove()
    assert max_rel_err(got, want) <= TOL
    assert max_rel_err(model(ids).logits, want) > 10 * TOL        # the ablation changed the logits


def _add_to_block_output(vec: torch.Tensor):
    def hook(module, args, out):
        if isinstance(out, tuple):
            return (out[0] + vec,) + out[1:]
        return out + vec
    return hook


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_adding_to_resid_post_matches_the_same_edit_in_torch(fp32, name):
    model, ref = fp32(name)
    k = model.engine.n_layer // 2
    vec = np.random.default_rng(5).standard_normal(model.engine.hidden).astype(np.float32)
    ids = _prompt(model.vocab_size)
    got = model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{k}.hook_resid_post", lambda x, _: x + vec)])
    handle = _blocks(ref)[k].register_forward_hook(_add_to_block_output(torch.from_numpy(vec)))
    try:
        with torch.no_grad():
            want = ref(torch.from_numpy(ids)).logits.numpy()
    finally:
        handle.remove()
    assert max_rel_err(got, want) <= TOL
    assert max_rel_err(model(ids).logits, want) > 10 * TOL


def _steered_generate(model, ref, layer: int, vec: np.ndarray, ids: np.ndarray, **kw) -> list:
    """generate() with vec added at blocks.{layer}.hook_resid_post, against transformers' generate with
    the same edit as a torch hook: same tokens, and not the unsteered ones.  Returns the hook's shapes."""
    shapes = []

    def steer(x, _):
        shapes.append(x.shape)
        return x + vec

    got = model.generate(ids, hooks=[(f"blocks.{layer}.hook_resid_post", steer)], **kw)
    handle = _blocks(ref)[layer].register_forward_hook(_add_to_block_output(torch.from_numpy(vec)))
    try:
        with torch.no_grad():
            want = ref.generate(torch.from_numpy(ids), **kw).numpy()
    finally:
        handle.remove()
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, model.generate(ids, **kw))         # the steering changed the tokens
    return shapes


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_steering_in_generate_matches_transformers_generate(fp32, name):
    model, ref = fp32(name)
    vec = (8.0 * np.random.default_rng(7).standard_normal(model.engine.hidden)).astype(np.float32)
    ids = _prompt(model.vocab_size, n=6, batch=1)
    calls = _steered_generate(model, ref, 0, vec, ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    # the prompt pass, then one pass per new token but the last
    assert calls == [(1, 6, model.engine.hidden)] + [(1, 1, model.engine.hidden)] * 11


def test_hooks_in_chat_run_on_every_pass(fp32, char_tokenizer):
    model, _ = fp32("llama-gqa-tied")
    model.reset_conversation()
    shapes = []
    turn = [{"role": "user", "content": "hello"}]
    reply = model.chat(turn, char_tokenizer, max_new_tokens=5, eos_token_id=None,
                       hooks=[("blocks.1.hook_resid_pre", lambda x, _: shapes.append(x.shape))])
    from llmrt.generation import chat_input_ids
    hidden = model.engine.hidden
    assert shapes == [(1, len(chat_input_ids(turn, char_tokenizer)), hidden)] + [(1, 1, hidden)] * 4
    # the next turn reuses the KV cache: its prompt pass covers only what the cache does not hold
    shapes.clear()
    turn2 = turn + [{"role": "assistant", "content": reply}, {"role": "user", "content": "again"}]
    model.chat(turn2, char_tokenizer, max_new_tokens=3, eos_token_id=None,
               hooks=[("blocks.1.hook_resid_pre", lambda x, _: shapes.append(x.shape))])
    reused = len(chat_input_ids(turn, char_tokenizer))       # at least the first turn's prompt
    assert len(shapes) == 3 and 0 < shapes[0][1] <= len(chat_input_ids(turn2, char_tokenizer)) - reused
    model.reset_conversation()


def test_names_filters_and_glob_patterns(fp32):
    model, _ = fp32("llama-gqa-tied")
    ids = _prompt(model.vocab_size, batch=1)
    _, cache = model.run_with_cache(ids, names=["blocks.*.hook_resid_post"])
    assert list(cache) == [f"blocks.{l}.hook_resid_post" for l in range(model.engine.n_layer)]
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_pattern"))
    assert len(cache) == model.engine.n_layer and all(a.shape == (1, 4, 11, 11) for a in cache.values())
    _, cache = model.run_with_cache(ids, names="hook_embed")
    assert list(cache) == ["hook_embed"]


def test_logit_lens_and_head_attribution(fp32):
    model, ref = fp32("llama-gqa-tied")
    e = model.engine
    ids = _prompt(model.vocab_size)
    logits, cache = model.run_with_cache(ids)
    last = cache[f"blocks.{e.n_layer - 1}.hook_resid_post"]
    np.testing.assert_allclose(model.unembed(last), logits, rtol=1e-5, atol=1e-5)
    assert model.unembed(last[0, 3]).shape == (model.vocab_size,)
    # a hook may read the lens mid-pass (it uses none of the engine's scratch): same logits as without it
    lens = []
    during = model.run_with_hooks(ids, [("blocks.0.hook_resid_post", lambda x, _: lens.append(model.unembed(x)))])
    np.testing.assert_array_equal(during, model(ids).logits)
    np.testing.assert_allclose(lens[0], model.unembed(cache["blocks.0.hook_resid_post"][:1]), rtol=1e-6, atol=1e-6)
    tokens = logits[:, -1].argmax(-1)
    dla = model.direct_logit_attribution(cache, tokens)
    assert dla.shape == (2, e.n_layer, e.n_head)
    # the same sum from transformers' weights: z_h W_O,h, through the RMS norm frozen at the final residual
    for l in range(e.n_layer):
        w_o = _out_proj(ref, l).weight.detach().numpy()
        for b in range(2):
            r = last[b, -1]
            scale = 1 / np.sqrt(np.mean(r.astype(np.float64) ** 2) + ref.config.rms_norm_eps)
            w_u = ref.lm_head.weight.detach().numpy()[tokens[b]] * ref.model.norm.weight.detach().numpy()
            for h in range(e.n_head):
                part = cache[f"blocks.{l}.attn.hook_z"][b, -1, h] @ w_o[:, h * e.head_dim:(h + 1) * e.head_dim].T
                np.testing.assert_allclose(dla[b, l, h], part @ w_u * scale, rtol=1e-4, atol=1e-5)


def test_patching_a_clean_activation_into_a_corrupted_run(fp32):
    model, _ = fp32("neox-pct25-parallel")
    clean, corrupt = _prompt(model.vocab_size, batch=1, seed=1), _prompt(model.vocab_size, batch=1, seed=2)
    clean_logits, clean_cache = model.run_with_cache(clean, names="blocks.*.hook_resid_pre")
    # patching the whole residual stream before block 0 makes the corrupted run the clean one
    patched = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.0.hook_resid_pre",
                                                        lambda x, _: clean_cache["blocks.0.hook_resid_pre"])])
    np.testing.assert_allclose(patched, clean_logits, rtol=1e-5, atol=1e-5)


def test_bad_hooks_are_clear_errors_and_the_model_still_works(fp32):
    model, _ = fp32("llama-gqa-tied")
    ids = _prompt(model.vocab_size)
    before = model(ids).logits
    scratch = model.engine.scratch_nbytes

    def boom(x, hook_name):
        raise KeyError("no such feature")

    cases = [
        (lambda: model.run_with_cache(ids, names=["blocks.0.hook_nonsense"]), "hook_nonsense"),
        (lambda: model.run_with_cache(ids, names=["blocks.9.*"]), "blocks.9.*"),
        (lambda: model.run_with_hooks(ids, [("blocks.0.attn.hook_zz", lambda x, _: x)]), "hook_zz"),
        (lambda: model.run_with_hooks(ids, [("blocks.0.hook_resid_post", lambda x, _: x[:, :1])]), "shape"),
        (lambda: model.run_with_hooks(ids, [("blocks.0.hook_resid_post", lambda x, _: x.astype(np.int32))]), "dtype"),
        (lambda: model.run_with_hooks(ids, [("blocks.0.hook_resid_post", lambda x, _: x.tolist())]), "list"),
        (lambda: model.run_with_hooks(ids, [("blocks.1.attn.hook_pattern", boom)]), "boom"),
        (lambda: model.run_with_hooks(ids, ["blocks.0.hook_resid_post"]), "pairs"),
        (lambda: model.generate(ids[:1], max_new_tokens=3, hooks=[("blocks.0.mlp.hook_post", boom)]), "KeyError"),
    ]
    for call, needle in cases:
        with pytest.raises(HookError, match=needle.replace("*", r"\*").replace(".", r"\.")):
            call()
        np.testing.assert_array_equal(model(ids).logits, before)
        assert model.engine.scratch_nbytes == scratch
    with pytest.raises(HookError) as info:
        model.run_with_hooks(ids, [("blocks.1.attn.hook_pattern", boom)])
    assert "blocks.1.attn.hook_pattern" in str(info.value) and isinstance(info.value.__cause__, KeyError)
    np.testing.assert_array_equal(model.generate(ids[:1], max_new_tokens=3), model.generate(ids[:1], max_new_tokens=3))


def test_long_inputs_reach_hooks_whole(tiny_models):
    """Past max_chunk rows a hooked forward still hands each hook the whole input (one chunk), and
    the unhooked forward's chunked logits are the same."""
    path, _ = tiny_models("llama-gqa-tied")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32", max_chunk=8)
    ids = _prompt(model.vocab_size, n=40, batch=1)
    logits, cache = model.run_with_cache(ids, names=["blocks.1.attn.hook_pattern", "unembed.hook_out"])
    assert cache["blocks.1.attn.hook_pattern"].shape == (1, 4, 40, 40)
    np.testing.assert_allclose(logits, model(ids).logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache["unembed.hook_out"], logits)


def test_pattern_hooks_change_the_output_only_when_they_edit(fp32):
    model, _ = fp32("llama-gqa-tied")
    ids = _prompt(model.vocab_size)
    plain = model(ids).logits
    noop = model.run_with_hooks(ids, [("blocks.*.attn.hook_pattern", lambda p, _: p),
                                      ("blocks.*.attn.hook_attn_scores", lambda s, _: None)])
    np.testing.assert_array_equal(noop, plain)

    def first_key_only(p, _):
        p[...] = 0.0
        p[..., 0] = 1.0

    logits, cache = model.run_with_cache(ids, names=["blocks.1.attn.hook_z", "blocks.1.attn.hook_v"],
                                         fwd_hooks=[("blocks.1.attn.hook_pattern", first_key_only)])
    v0 = np.repeat(cache["blocks.1.attn.hook_v"][:, :1], 2, axis=2)       # 4 heads share 2 KV heads
    np.testing.assert_allclose(cache["blocks.1.attn.hook_z"], np.broadcast_to(v0, cache["blocks.1.attn.hook_z"].shape),
                               rtol=1e-6, atol=1e-7)
    assert max_rel_err(logits, plain) > 1e-3

    def no_attention_to_the_first_key(s, _):
        s[..., 0] = -np.inf
        return s

    edited = model.run_with_hooks(ids[:, :5], [("blocks.0.attn.hook_attn_scores", no_attention_to_the_first_key)])
    assert max_rel_err(edited[:, 1:], model(ids[:, :5]).logits[:, 1:]) > 1e-3


def test_steering_beam_search_matches_transformers(fp32):
    """Beams run as one batched pass per step: the hook sees (beams, 1, d_model) and edits every beam."""
    model, ref = fp32("llama-gqa-tied")
    vec = (4.0 * np.random.default_rng(11).standard_normal(model.engine.hidden)).astype(np.float32)
    ids = _prompt(model.vocab_size, n=6, batch=1, seed=4)
    shapes = _steered_generate(model, ref, 1, vec, ids, max_new_tokens=8, do_sample=False, num_beams=3,
                               eos_token_id=None, pad_token_id=0)
    assert (3, 1, model.engine.hidden) in shapes
