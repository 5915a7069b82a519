"""llmrt.evaluation's measures against their definitions, written the plain way (whole float64 arrays):
the library computes them a few rows at a time, which must not change them."""
import numpy as np
import pytest

from llmrt import evaluation


def _plain_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


@pytest.mark.parametrize("rows", [evaluation.ROWS_PER_STEP, 2 * evaluation.ROWS_PER_STEP + 5])
def test_comparison_is_the_definition(rows):
    rng = np.random.default_rng(rows)
    ref = rng.normal(0, 4, (rows, 1000)).astype(np.float32)
    model = (ref + rng.normal(0, 1, ref.shape)).astype(np.float32)
    model[0] += 300.0                        # large logits: the max is taken out before exp
    targets = rng.integers(0, 1000, rows)
    c = evaluation.Comparison()
    c.add(model[:rows // 2], ref[:rows // 2], targets[:rows // 2])     # accumulates over calls
    c.add(model[rows // 2:], ref[rows // 2:], targets[rows // 2:])
    lp, rp = _plain_log_softmax(model), _plain_log_softmax(ref)
    idx = np.arange(rows)
    assert c.count == rows
    assert c.perplexity == pytest.approx(np.exp(-lp[idx, targets].mean()), rel=1e-12)
    assert c.ref_perplexity == pytest.approx(np.exp(-rp[idx, targets].mean()), rel=1e-12)
    assert c.mean_kl == pytest.approx((np.exp(rp) * (rp - lp)).sum() / rows, rel=1e-10)
    assert c.top1 == (lp.argmax(-1) == rp.argmax(-1)).mean()
    assert 0 < c.mean_kl and 0 < c.top1 < 1  # the data is neither trivial nor degenerate


def test_perplexity_is_the_definition():
    rng = np.random.default_rng(7)
    table = rng.normal(0, 3, (50, 200)).astype(np.float32)     # logits by the window's first token
    wins = [rng.integers(0, 200, 50) for _ in range(3)]
    want = np.exp(-np.mean([_plain_log_softmax(table[:-1] + w[0])[np.arange(49), w[1:]] for w in wins]))
    assert evaluation.perplexity(lambda w: table + w[0], wins) == pytest.approx(want, rel=1e-12)


def test_comparison_refuses_mismatched_shapes():
    c = evaluation.Comparison()
    with pytest.raises(ValueError, match="disagree in shape"):
        c.add(np.zeros((4, 10)), np.zeros((4, 11)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="disagree in shape"):
        c.add(np.zeros((4, 10)), np.zeros((4, 10)), np.zeros(3, dtype=np.int64))
