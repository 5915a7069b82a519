"""The block spec: one validated value from a family's config to the engine."""
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
    (dict(rotary_dim=5, inv_freq=np.zeros(2)), "must be even"),
    (dict(rotary_dim=32, inv_freq=np.zeros(16)), "at most head_dim"),
    (dict(rotary_dim=8, inv_freq=np.zeros(3)), "rotary_dim / 2 = 4"),
    (dict(sliding_window=-1), "sliding_window"),
    (dict(attn_scale=0.0), "attn_scale"),
])
def test_invalid_spec_names_the_field(kw, msg):
    base = dict(n_heads=4, n_kv_heads=2, head_dim=16)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        BlockSpec(**{**base, **kw})
