"""The benchmarks' assignment-style baseline computes what xpnn computes (so the speed-ups in
bench/RESULTS.md compare like with like)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from xpnn.models import ThreeLayerConvNet, mnist_cnn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import baseline  # noqa: E402


@pytest.mark.parametrize("kind", ["mnist", "cifar"])
def test_baseline_step_loss_matches_xpnn(rng, kind):
    if kind == "mnist":
        model, shape, convs = mnist_cnn(seed=0, dtype="float64"), (6, 1, 28, 28), [(1, 1), (1, 1)]
    else:
        model = ThreeLayerConvNet(seed=0, weight_scale=1e-2, dtype="float64")
        shape, convs = (4, 3, 32, 32), [(1, 3)]
    X, y = rng.standard_normal(shape), rng.integers(0, 10, shape[0])
    loss, grads = model.loss(X, y)
    net = baseline.BaselineNet({k: np.array(v) for k, v in model.params.items()}, convs)
    assert abs(net.step(X, y) - loss) < 1e-10


def test_baseline_conv_and_pool_match_xpnn(rng):
    from xpnn.layers import conv_backward, conv_forward, max_pool_forward
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, cache = conv_forward(x, w, b, {"stride": 1, "pad": 1})
    out_b, cache_b = baseline.conv_forward(x, w, b, 1, 1)
    np.testing.assert_allclose(out_b, out, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(baseline.conv_backward(dout, cache_b), conv_backward(dout, cache)):
        np.testing.assert_allclose(got, want, atol=1e-12)
    pooled, _ = baseline.max_pool_forward(x)
    np.testing.assert_array_equal(pooled, max_pool_forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})[0])
