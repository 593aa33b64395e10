"""On a real GPU (CuPy sees one): kernels, layers and training against the CPU.
Skipped, with the reason shown, on machines without one; the layer and gradient tests in
test_layers.py and test_conv_pool_reference.py also run on CuPy through the `xp` fixture."""
import numpy as np
import pytest

from xpnn import Solver, cuda, ops
from xpnn.backend import DeviceError, get_backend, to_numpy
from xpnn.data import get_data
from xpnn.layers import affine_forward
from xpnn.models import FullyConnectedNet, load, mnist_cnn

from .test_kernels import GEOMETRIES, POOLS

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,kh,kw,stride,pad", GEOMETRIES)
def test_im2col_col2im_kernels_on_gpu(cp, rng, dtype, N, C, H, W, kh, kw, stride, pad):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    col = cuda.OPS["im2col"](cp.asarray(x), kh, kw, stride, pad)
    np.testing.assert_array_equal(col.get(), ops.im2col(x, kh, kw, stride, pad))
    dcol = rng.standard_normal(col.shape).astype(dtype)
    np.testing.assert_array_equal(cuda.OPS["col2im"](cp.asarray(dcol), H, W, stride, pad).get(),
                                  ops.col2im(dcol, H, W, stride, pad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,ph,pw,stride", POOLS)
def test_max_pool_kernels_on_gpu(cp, rng, dtype, N, C, H, W, ph, pw, stride):
    x = rng.integers(0, 3, (N, C, H, W)).astype(dtype)
    out, argmax = cuda.OPS["max_pool_forward"](cp.asarray(x), ph, pw, stride)
    out_ref, argmax_ref = ops.max_pool_forward(x, ph, pw, stride)
    np.testing.assert_array_equal(out.get(), out_ref)
    np.testing.assert_array_equal(argmax.get(), argmax_ref)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(
        cuda.OPS["max_pool_backward"](cp.asarray(dout), argmax, H, W, ph, pw, stride).get(),
        ops.max_pool_backward(dout, argmax_ref, H, W, ph, pw, stride))


def test_large_launch_uses_grid_stride(cp, rng):
    # More outputs than one grid of MAX_BLOCKS x 256 threads covers.
    x = cp.asarray(rng.standard_normal((32, 8, 64, 64)).astype(np.float32))
    col = cuda.OPS["im2col"](x, 5, 5, 1, 2)
    assert col.size > cuda.MAX_BLOCKS * cuda.BLOCK
    np.testing.assert_array_equal(col.get(), ops.im2col(x.get(), 5, 5, 1, 2))


def train_digits(device, seed=0):
    data = get_data("digits")
    model = mnist_cnn(input_shape=(1, 8, 8), seed=seed, device=device)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 5e-3},
                    num_epochs=4, batch_size=50, verbose=False, seed=seed)
    solver.train()
    return model, solver


def test_gpu_training_matches_cpu_accuracy():
    _, cpu = train_digits("cpu")
    model, gpu = train_digits("cuda")
    assert model.device == "cuda:0" and all(get_backend("cuda").owns(v) for v in model.params.values())
    assert gpu.best_val_acc > 0.9
    assert abs(gpu.best_val_acc - cpu.best_val_acc) < 0.03


def test_gpu_training_is_bitwise_reproducible():
    a, _ = train_digits("cuda", seed=3)
    b, _ = train_digits("cuda", seed=3)
    for k in a.params:
        np.testing.assert_array_equal(to_numpy(a.params[k]), to_numpy(b.params[k]))


def test_model_moves_and_checkpoints_to_cpu(tmp_path, rng):
    model = FullyConnectedNet([16], input_dim=6, num_classes=3, normalization="batchnorm", seed=0, device="cuda")
    X = rng.standard_normal((5, 6)).astype(np.float32)
    gpu_scores = to_numpy(model.loss(get_backend("cuda").to_device(X)))
    model.save(tmp_path / "m.npz")
    on_cpu = load(tmp_path / "m.npz", device="cpu")
    np.testing.assert_allclose(on_cpu.loss(X), gpu_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.to("cpu").loss(X), gpu_scores, rtol=1e-5, atol=1e-6)


def test_mixing_host_and_gpu_arrays_is_an_error(cp):
    with pytest.raises(DeviceError, match="different libraries"):
        affine_forward(cp.ones((2, 3)), np.ones((3, 4)), cp.ones(4))
    model = mnist_cnn(device="cuda")
    with pytest.raises(DeviceError):
        model.loss(np.zeros((1, 1, 28, 28), np.float32))


def test_second_gpu(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    model = mnist_cnn(device="cuda:1")
    assert all(v.device.id == 1 for v in model.params.values())
    x = get_backend("cuda:1").to_device(np.zeros((2, 1, 28, 28), np.float32))
    assert model.loss(x).device.id == 1
    with pytest.raises(DeviceError, match="different devices"):
        affine_forward(cp.ones((2, 3)), get_backend("cuda:1").to_device(np.ones((3, 4))), cp.ones(4))


def test_training_step_copies_only_the_loss_to_the_host(monkeypatch):
    """The step's only device->host transfer is the loss (with the label check riding on it)."""
    import xpnn.layers
    copies = []
    real = xpnn.layers.to_numpy
    monkeypatch.setattr(xpnn.layers, "to_numpy", lambda a: copies.append(a.shape) or real(a))
    model = mnist_cnn(device="cuda", reg=1e-3, seed=0)
    be = get_backend("cuda")
    X = be.to_device(np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32))
    y = be.to_device(np.arange(8) % 10)
    loss, grads = model.loss(X, y)
    assert copies == [(3,)]                    # [loss, min label, max label], once
    assert all(get_backend("cuda").owns(g) for g in grads.values())
