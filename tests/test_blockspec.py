"""The block spec: one validated value from a family's config to the engine."""
import re

import numpy as np
import pytest

from llmrt.blockspec import BlockSpec
from llmrt.config import ModelConfig


def test_config_makes_the_spec_the_engine_takes(tiny_models):
    from llmrt import AutoModelForCausalLM
    path, _ = tiny_models("neox-pct25-parallel")
    model = AutoModelForCausalLM.from_pretrained(path, compute_dtype="fp32")
    spec = model.engine.spec
    assert isinstance(spec, BlockSpec)
    assert (spec.norm, spec.mlp, spec.residual) == ("layer", "gelu", "parallel")
    assert spec.rotary_dim == 4 and spec.head_dim == 16 and not spec.rotary_interleaved
    np.testing.assert_array_equal(spec.inv_freq, model.config.inv_freq())
    assert spec.scale == pytest.approx(16 ** -0.5)


def test_llama_config_spec():
    cfg = ModelConfig(family="llama", vocab_size=10, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=32, rotary_dim=16, sliding_window=8)
    spec = cfg.block_spec()
    assert spec.gated and spec.norm == "rms" and spec.sliding_window == 8 and spec.inv_freq.shape == (8,)


@pytest.mark.parametrize("kw,msg", [
    (dict(norm="batch"), "unknown norm 'batch'"),
    (dict(mlp="swish"), "unknown mlp 'swish'"),
    (dict(residual="both"), "unknown residual 'both'"),
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(n_kv_heads=0), "multiple of n_kv_heads"),
    (dict(positions="rotary", rotary_dim=5, inv_freq=np.zeros(2)), "must be even"),
    (dict(positions="rotary", rotary_dim=32, inv_freq=np.zeros(16)), "at most head_dim"),
    (dict(positions="rotary", rotary_dim=8, inv_freq=np.zeros(3)), "rotary_dim / 2 = 4"),
    (dict(positions="rotary"), "rotary positions need rotary_dim > 0"),
    (dict(positions="sinusoid"), "unknown positions 'sinusoid'"),
    (dict(positions="alibi"), "alibi_slopes are given exactly"),
    (dict(alibi_slopes=np.ones(4)), "alibi_slopes are given exactly"),
    (dict(positions="alibi", alibi_slopes=np.ones(3)), "one value per head (4)"),
    (dict(position_offset=2), "position_offset 2 needs learned positions"),
    (dict(norm_placement="middle"), "unknown norm_placement"),
    (dict(norm_placement="post", residual="parallel"), "post-norm blocks need the sequential residual"),
    (dict(sliding_window=-1), "sliding windows"),
    (dict(layer_windows=(4, -1)), "sliding windows"),
    (dict(attn_scale=0.0), "attn_scale"),
    (dict(qkv_clip=-1.0), "qkv_clip"),
])
def test_invalid_spec_names_the_field(kw, msg):
    base = dict(n_heads=4, n_kv_heads=2, head_dim=16, positions="none")
    with pytest.raises(ValueError, match=re.escape(msg)):
        BlockSpec(**{**base, **kw})


@pytest.mark.parametrize("n_heads", [1, 4, 6, 12, 16])
def test_alibi_slopes_are_bloom_and_mpt_slopes(n_heads):
    """The slopes of the ALiBi paper's rule (BLOOM) and of MPT's interleave (with alibi_bias_max),
    read from transformers' own bias tensors (BLOOM: slope_h * j; MPT: slope_h * (j - L + 1))."""
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
    from llmrt.blockspec import alibi_slopes

    bloom = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_heads, torch.float32)[:, 0, 1].numpy()
    np.testing.assert_allclose(alibi_slopes(n_heads), bloom, rtol=1e-6)
    for bias_max in (8.0, 5.0):
        mpt = -build_mpt_alibi_tensor(n_heads, 2, alibi_bias_max=bias_max)[:, 0, 0].numpy()   # columns j - 1 = -1, 0
        np.testing.assert_allclose(alibi_slopes(n_heads, bias_max, interleave_extra=True), mpt, rtol=1e-6)


def test_per_layer_windows():
    spec = BlockSpec(n_heads=2, n_kv_heads=1, head_dim=8, positions="none", sliding_window=5, layer_windows=(0, 3))
    assert spec.window_of(0) == 0 and spec.window_of(1) == 3
    assert BlockSpec(n_heads=2, n_kv_heads=1, head_dim=8, positions="none", sliding_window=5).window_of(1) == 5
