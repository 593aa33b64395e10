"""The CUDA kernels in kernels/*.cu, checked without a GPU:
  1. every kernel compiles with NVRTC, with CuPy 14.2's own options, to a cubin (ptxas runs)
     for sm_75, sm_80, sm_90 and sm_120 (CUDA 13) and sm_70 (CUDA 12: skipped by a newer NVRTC);
  2. the same source, run on the CPU through an emulation of the thread grid (cuda_emu.h),
     gives exactly the portable implementation's numbers on many geometries (the softmax loss,
     whose exp, log and row sums are not NumPy's: to within a few units in the last place).
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from xpnn import ops
from xpnn.backends import cupy_kernels as cuda
from xpnn.backend import get_backend
from xpnn.layers import softmax_loss_terms

from .emulation import emulator

GEOMETRIES = [  # (N, C, H, W, kh, kw, stride, pad)
    (1, 1, 5, 5, 1, 1, 1, 0), (2, 3, 7, 6, 3, 3, 1, 1), (3, 2, 9, 7, 3, 2, 2, 0),
    (2, 2, 8, 8, 5, 5, 3, 2), (1, 3, 9, 6, 7, 7, 1, 3), (2, 1, 4, 9, 2, 4, 2, 1),
    (1, 2, 11, 10, 7, 3, 3, 3), (3, 1, 5, 6, 4, 1, 1, 2), (5, 3, 13, 11, 3, 3, 2, 1),
]
POOLS = [  # (N, C, H, W, ph, pw, stride)
    (2, 3, 4, 4, 2, 2, 2), (1, 2, 7, 7, 3, 3, 2), (3, 1, 6, 5, 3, 3, 1), (2, 2, 8, 6, 2, 3, 3),
    (1, 1, 5, 9, 1, 1, 1), (2, 3, 9, 9, 4, 2, 1), (3, 3, 11, 13, 7, 7, 2), (1, 2, 28, 28, 2, 2, 2),
]
# (N, C) for the softmax loss: one thread per row, and the emulated grid has 5 x 32 threads,
# so 37 rows leave a block partly idle and 200 rows send the grid-stride loop round twice.
SOFTMAX_SHAPES = [(1, 1), (1, 10), (8, 3), (37, 10), (200, 10), (5, 300)]


def cupy_nvrtc_options(arch: str, include_dir) -> list:
    """The options CuPy 14.2 hands NVRTC for `cupy.RawModule(code, options=CupyLauncher.OPTIONS)`,
    in its order: cupy/_core/core.pyx `assemble_cupy_compiler_options` (CCCL's include dirs
    first; the caller's options, whose -std keeps CuPy's --std=c++17 out; CuPy's and CUDA's
    include dirs), cupy/cuda/compiler.py `_compile_with_cache_cuda` (-ftz=true) and
    `_compile_using_nvrtc_no_warning` (-arch=sm_XX, so NVRTC makes a cubin and ptxas runs, as
    `_get_arch_for_options_for_nvrtc` asks for an arch this NVRTC knows;
    --device-as-default-execution-space). The include dirs are empty stand-ins: the source
    includes nothing."""
    cupy_include = include_dir / "cupy_include"
    return [f"-I{cupy_include}/cupy/_cccl/cub", f"-I{cupy_include}/cupy/_cccl/thrust",
            f"-I{cupy_include}/cupy/_cccl/libcudacxx", *cuda.CupyLauncher.OPTIONS,
            f"-I{cupy_include}", f"-I{include_dir / 'cuda_include'}", "-ftz=true",
            f"-arch={arch}", "--device-as-default-execution-space"]


# CUDA 13 (the cuda13 extra) builds for Turing and newer; CUDA 12 (cuda12) also for Volta.
ARCHS = {"sm_70": 12, "sm_75": 13, "sm_80": 13, "sm_90": 13, "sm_120": 13}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_kernel_compiles_to_a_cubin_with_cupys_options(arch, tmp_path):
    """NVRTC with CuPy's exact options, to a cubin (so ptxas runs, as on a GPU): every entry
    point is there under its own name, as RawModule.get_function looks it up."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="pip install cuda-bindings nvidia-cuda-nvrtc")
    _, supported = nvrtc.nvrtcGetSupportedArchs()
    _, major, minor = nvrtc.nvrtcVersion()
    if int(arch[3:]) not in supported:
        pytest.skip(f"NVRTC {major}.{minor} does not build {arch} (CUDA {ARCHS[arch]} does)")
    names = emulator.kernel_names()
    assert sorted(names) == sorted(f"{op.name}_{t}" for op in ops.kernel_ops() for t in ("f32", "f64"))
    for d in ("cupy_include/cupy/_cccl/cub", "cupy_include/cupy/_cccl/thrust",
              "cupy_include/cupy/_cccl/libcudacxx", "cuda_include"):
        (tmp_path / d).mkdir(parents=True)
    err, prog = nvrtc.nvrtcCreateProgram(cuda.module_source().encode(), b"kern.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    options = [o.encode() for o in cupy_nvrtc_options(arch, tmp_path)]
    (result,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
    _, log_size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * log_size
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    assert b"warning" not in log.lower(), log.decode(errors="replace")
    _, size = nvrtc.nvrtcGetCUBINSize(prog)
    cubin = b" " * size
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    nvrtc.nvrtcDestroyProgram(prog)
    assert cubin[:4] == b"\x7fELF", "not a cubin"
    for name in names:   # extern "C": the symbol keeps its name
        assert f"\0{name}\0".encode() in cubin, f"{name} missing from the {arch} cubin"


def test_kernels_compile_unchanged_with_cupys_default_std(tmp_path):
    """Without our -std=c++14 CuPy 14 would pass --std=c++17: the kernels build either way."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="pip install cuda-bindings nvidia-cuda-nvrtc")
    err, prog = nvrtc.nvrtcCreateProgram(cuda.module_source().encode(), b"kern.cu", 0, [], [])
    options = [o.encode() for o in ("--std=c++17", "--fmad=false", "-ftz=true", "-arch=compute_80",
                                    "--device-as-default-execution-space")]
    (result,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
    nvrtc.nvrtcDestroyProgram(prog)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS


@pytest.fixture(scope="module")
def kernel_ops(tmp_path_factory):
    """The accelerated-op table of xpnn.backends.cupy_kernels, bound to the emulated launcher instead of CuPy."""
    sanitize = os.environ.get("XPNN_EMULATION_SANITIZE") == "1"     # see the ASan test below
    launcher = emulator.EmulatedLauncher(emulator.build(tmp_path_factory.mktemp("emu"), sanitize))
    table = dict(cuda.make_ops(launcher))
    table["launcher"] = launcher
    return table


def _as_list(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ops.kernel_ops(), ids=lambda op: op.name)
def test_every_kernel_equals_the_portable_code_on_its_declared_examples(kernel_ops, rng, op, dtype):
    """What `xpnn selftest` checks on a GPU, through the grid emulation: each op declared with
    a kernel (xpnn.ops), on the examples it declares, bit for bit or to its declared tolerance."""
    for args in op.examples(rng, dtype):
        got, expected = _as_list(kernel_ops[op.name](*args)), _as_list(op.portable(*args))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            assert g.dtype == e.dtype or (e.dtype, g.dtype) == (np.int8, np.int32)   # argmax
            if op.tolerance is None:
                np.testing.assert_array_equal(g, e)
            else:
                assert_softmax_close(g, e, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,kh,kw,stride,pad", GEOMETRIES)
def test_im2col_and_col2im_kernels(kernel_ops, rng, dtype, N, C, H, W, kh, kw, stride, pad):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    col = kernel_ops["im2col"](x, kh, kw, stride, pad)
    expected = ops.im2col(x, kh, kw, stride, pad)
    assert col.dtype == dtype and col.shape == expected.shape
    np.testing.assert_array_equal(col, expected)
    dcol = rng.standard_normal(col.shape).astype(dtype)
    # The gather sums in the portable loop's order: bitwise equal, not merely close.
    np.testing.assert_array_equal(kernel_ops["col2im"](dcol, H, W, stride, pad),
                                  ops.col2im(dcol, H, W, stride, pad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("N,C,H,W,ph,pw,stride", POOLS)
def test_max_pool_kernels(kernel_ops, rng, dtype, ties, N, C, H, W, ph, pw, stride):
    if ties:   # few distinct values: many windows hold their maximum more than once
        x = rng.integers(0, 3, (N, C, H, W)).astype(dtype)
    else:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
    out, argmax = kernel_ops["max_pool_forward"](x, ph, pw, stride)
    out_ref, argmax_ref = ops.max_pool_forward(x, ph, pw, stride)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert argmax.dtype == np.int32
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(kernel_ops["max_pool_backward"](dout, argmax, H, W, ph, pw, stride),
                                  ops.max_pool_backward(dout, argmax_ref, H, W, ph, pw, stride))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,ph,pw,stride", POOLS)
def test_avg_pool_kernels(kernel_ops, rng, dtype, N, C, H, W, ph, pw, stride):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    out = kernel_ops["avg_pool_forward"](x, ph, pw, stride)
    np.testing.assert_array_equal(out, ops.avg_pool_forward(x, ph, pw, stride))
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(kernel_ops["avg_pool_backward"](dout, H, W, ph, pw, stride),
                                  ops.avg_pool_backward(dout, H, W, ph, pw, stride))


def test_grid_stride_loop_covers_more_work_than_threads(kernel_ops, rng):
    # 5 blocks of 32 threads = 160 threads for 2*3*13*11 = 858 outputs, not a multiple of 32.
    x = rng.standard_normal((2, 3, 13, 11))
    launcher = kernel_ops["launcher"]
    launcher.launches.clear()
    np.testing.assert_array_equal(kernel_ops["col2im"](ops.im2col(x, 3, 3, 1, 1), 13, 11, 1, 1),
                                  ops.col2im(ops.im2col(x, 3, 3, 1, 1), 13, 11, 1, 1))
    assert launcher.launches == [("col2im_f64", 5, 32)]


def test_kernels_take_noncontiguous_input(kernel_ops, rng):
    x = np.transpose(rng.standard_normal((5, 4, 3, 2)), (3, 2, 1, 0))   # (2, 3, 4, 5) view
    np.testing.assert_array_equal(kernel_ops["im2col"](x, 2, 2, 1, 0), ops.im2col(x, 2, 2, 1, 0))


def test_kernels_reject_other_dtypes(kernel_ops):
    with pytest.raises(TypeError, match="float32 or float64"):
        kernel_ops["im2col"](np.ones((1, 1, 3, 3), dtype=np.float16), 2, 2, 1, 0)


def test_launch_config_caps_the_grid():
    assert cuda.launch_config(1) == (1, 256)
    assert cuda.launch_config(257) == (2, 256)
    assert cuda.launch_config(10**12) == (cuda.MAX_BLOCKS, 256)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_kernel_propagates_nan_like_the_portable_code(kernel_ops, rng, dtype):
    x = rng.standard_normal((2, 3, 7, 7)).astype(dtype)
    x[0, 0, 1, 1] = x[1, 2, 4, 5] = x[1, 2, 4, 6] = np.nan
    out, argmax = kernel_ops["max_pool_forward"](x, 3, 3, 2)
    out_ref, argmax_ref = ops.max_pool_forward(x, 3, 3, 2)
    np.testing.assert_array_equal(out, out_ref)            # NaN where the window holds one
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert np.isnan(out[0, 0, 0, 0]) and np.isnan(out[1, 2, 2, 2])


def test_compiled_source_changes_with_every_kernel_file(tmp_path, monkeypatch):
    """CuPy caches compiled kernels by source text + options: the text must hold the files
    themselves, not #include lines, or an edited kernel would keep running its old cubin."""
    import shutil
    original, source_dir = cuda.module_source(), cuda.kernel_dir()
    assert "#include" not in original
    copy_dir = tmp_path / "kernels"
    monkeypatch.setattr(cuda, "kernel_dir", lambda: copy_dir)
    for name in sorted(p.name for p in source_dir.iterdir()):
        shutil.rmtree(copy_dir, ignore_errors=True)
        shutil.copytree(source_dir, copy_dir)
        assert cuda.module_source() == original
        (copy_dir / name).write_text((copy_dir / name).read_text() + "\n// edited\n")
        edited = cuda.module_source()
        assert edited != original and "// edited" in edited, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "nesterov", "adagrad", "rmsprop", "adam",
                                  "adamw"])
def test_fused_update_rules_equal_the_portable_ones(kernel_ops, rng, monkeypatch, dtype, rule):
    """Each rule's kernel, through the same xpnn.optim code path CuPy takes, gives the portable
    rule's numbers bit for bit over three steps (state made, then carried)."""
    from xpnn import optim
    w0 = rng.standard_normal((7, 13)).astype(dtype)
    grads = [rng.standard_normal((7, 13)).astype(dtype) for _ in range(3)]
    config = {"learning_rate": 3e-2}

    def run():
        w, cfg = w0, dict(config)
        for dw in grads:
            w, cfg = optim.UPDATE_RULES[rule](w, dw, cfg)
        return w, cfg

    w_ref, cfg_ref = run()
    launcher = kernel_ops["launcher"]
    launcher.launches.clear()
    monkeypatch.setattr(get_backend("cpu"), "ops", kernel_ops)     # NumPy arrays, emulated kernels
    w_fused, cfg_fused = run()
    assert [name for name, *_ in launcher.launches] == [f"{rule}_{'f32' if dtype == np.float32 else 'f64'}"] * 3
    assert w_fused.dtype == dtype
    np.testing.assert_array_equal(w_fused, w_ref)
    for key, value in cfg_ref.items():
        np.testing.assert_array_equal(cfg_fused[key], value, err_msg=key)


def assert_softmax_close(got, expected, dtype):
    """The fused softmax loss against the portable one: exp, log and the row sums differ from
    NumPy's by an ulp or so, so this is tight (relative to the array's largest finite
    magnitude) but not bitwise; NaN and infinities must be where the portable code has them."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == dtype and got.shape == expected.shape
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    scale = np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, equal_nan=True)


def portable_softmax_loss(x, y):
    with np.errstate(all="ignore"):          # NaN and inf rows: NumPy warns, the kernel cannot
        loss, dx, _ = softmax_loss_terms(x, y)
    return loss, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C", SOFTMAX_SHAPES)
def test_softmax_loss_kernel(kernel_ops, rng, dtype, N, C):
    x = (3 * rng.standard_normal((N, C))).astype(dtype)
    y = rng.integers(0, C, N)
    launcher = kernel_ops["launcher"]
    launcher.launches.clear()
    loss, dx = kernel_ops["softmax_loss"](x, y)
    assert [name for name, *_ in launcher.launches] == [f"softmax_loss_{'f32' if dtype == np.float32 else 'f64'}"]
    loss_ref, dx_ref = portable_softmax_loss(x, y)
    assert loss.shape == ()
    assert_softmax_close(loss, loss_ref, dtype)
    assert_softmax_close(dx, dx_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_kernel_with_labels_out_of_range(kernel_ops, rng, dtype):
    """A label outside [0, C) matches no class, as in the portable one-hot: that row has no
    target term, and the kernel reads nothing out of bounds (the emulation would show garbage
    or crash); host_loss then rejects the labels, on every backend."""
    x = rng.standard_normal((6, 4)).astype(dtype)
    y = np.array([0, -1, 4, 3, 2**40, -2**62])
    loss, dx = kernel_ops["softmax_loss"](x, y)
    loss_ref, dx_ref = portable_softmax_loss(x, y)
    assert_softmax_close(loss, loss_ref, dtype)
    assert_softmax_close(dx, dx_ref, dtype)
    np.testing.assert_array_equal(dx[1] > 0, True)           # the softmax alone, no -1 / N


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_kernel_with_nan_inf_and_huge_scores(kernel_ops, dtype):
    """NaN, infinities and huge scores give what the portable code gives, row by row."""
    inf, nan = np.inf, np.nan
    x = np.array([[1.0, nan, 2.0], [1.0, -inf, 2.0], [1.0, -inf, 2.0], [inf, 0.0, 1.0],
                  [-inf, -inf, -inf], [1000.0, 0.0, -1000.0], [3e38, -3e38, 0.0]]).astype(dtype)
    y = np.array([0, 0, 1, 1, 2, 2, 1])
    for rows in ([0], [1], [2], [3], [4], [5, 6]):
        loss, dx = kernel_ops["softmax_loss"](x[rows], y[rows])
        loss_ref, dx_ref = portable_softmax_loss(x[rows], y[rows])
        assert_softmax_close(loss, loss_ref, dtype)
        assert_softmax_close(dx, dx_ref, dtype)
    assert np.isnan(kernel_ops["softmax_loss"](x[[1]], y[[1]])[0])      # 0 * -inf in the one-hot sum
    assert kernel_ops["softmax_loss"](x[[2]], y[[2]])[0] == inf         # the target's own -inf


def test_softmax_loss_kernel_takes_views_and_any_integer_labels(kernel_ops, rng):
    x = rng.standard_normal((10, 7)).T                        # (7, 10), not contiguous
    y = rng.integers(0, 10, 7)
    loss_ref, dx_ref = portable_softmax_loss(x, y)
    for labels in (y, y.astype(np.int32), y.astype(np.uint8)):
        loss, dx = kernel_ops["softmax_loss"](x, labels)
        assert_softmax_close(loss, loss_ref, np.float64)
        assert_softmax_close(dx, dx_ref, np.float64)
    with pytest.raises(ValueError, match="at least one class"):
        kernel_ops["softmax_loss"](np.ones((3, 0)), np.zeros(3, np.int64))


# ---------------------------------------------------------------------------- the same check everywhere

RULE_STATES = {"sgd": (), "sgd_momentum": ("velocity",), "nesterov": ("velocity",),
               "adagrad": ("cache",), "rmsprop": ("cache",), "adam": ("m", "v"), "adamw": ("m", "v")}


@pytest.mark.parametrize("rule", sorted(RULE_STATES))
def test_update_rules_check_gradient_and_state_on_every_backend(rule):
    """What the CUDA path refuses at its kernels, the portable rules refuse too: array-api-strict's
    second device stands for another GPU; shape and dtype mismatches are refused on NumPy."""
    import array_api_strict as xps
    from xpnn.backend import DeviceError
    from xpnn.optim import UPDATE_RULES
    update = UPDATE_RULES[rule]
    other = xps.Device("device1")
    w = xps.asarray(np.ones((2, 3)))
    for bad in ("dw",) + RULE_STATES[rule]:
        dw = xps.asarray(np.ones((2, 3)), device=other if bad == "dw" else None)
        config = {k: xps.asarray(np.zeros((2, 3)), device=other if bad == k else None)
                  for k in RULE_STATES[rule]}
        label = "dw" if bad == "dw" else f"config['{bad}']"
        with pytest.raises(DeviceError, match=rf"{rule}: {re.escape(label)} is on .*device1.*, "
                                              r"the parameter w on .*CPU_DEVICE"):
            update(w, dw, config)
    with pytest.raises(ValueError, match=rf"{rule}: dw has shape \(3,\), the parameter w \(2, 3\)"):
        update(np.ones((2, 3)), np.ones(3))
    for key in RULE_STATES[rule]:
        with pytest.raises(TypeError, match=rf"{rule}: config\['{key}'\] is float32, the parameter w float64"):
            update(np.ones((2, 3)), np.ones((2, 3)), {key: np.zeros((2, 3), np.float32)})


def test_emulated_kernels_refuse_what_they_would_misread(kernel_ops):
    """The glue's one check holds for the emulation's launcher too: int8 argmax, host vs device."""
    dout = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(TypeError, match=r"argument 1 'argmax' \(int\*\) needs int32 data, got int8"):
        kernel_ops["max_pool_backward"](dout, np.zeros((1, 1, 2, 2), np.int8), 4, 4, 2, 2, 2)
    with pytest.raises(ValueError, match=r"argmax has shape \(1, 1, 1, 2\)"):
        kernel_ops["max_pool_backward"](dout, np.zeros((1, 1, 1, 2), np.int32), 4, 4, 2, 2, 2)
    # The emulation's launcher checks on its own, from the preprocessed source: called directly.
    launch, w = kernel_ops["launcher"], np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"sgd_f32: argument 1 \(const float\* dw\) needs float32, got float64"):
        launch("sgd_f32", 3, (w, w.astype(np.float64), w, np.int64(3), np.float32(0.1)))
    with pytest.raises(TypeError, match=r"sgd_f32: argument 4 \(float lr\) needs float32, got float64"):
        launch("sgd_f32", 3, (w, w, w, np.int64(3), np.float64(0.1)))
    with pytest.raises(TypeError, match=r"argument 3 \(index_t n\) needs int64, got int32"):
        launch("sgd_f32", 3, (w, w, w, np.int32(3), np.float32(0.1)))


def test_the_emulated_kernels_under_address_sanitizer(tmp_path):
    """Every kernel test above again, with the emulation built with AddressSanitizer and
    UndefinedBehaviorSanitizer: a read or write past any array (NumPy's buffers come from the
    preloaded libasan's malloc), or undefined arithmetic, aborts the run. Skipped only where
    the compiler has no ASan."""
    lib = subprocess.run([emulator.compiler(), "-print-file-name=libasan.so"], capture_output=True,
                         text=True).stdout.strip()
    probe = tmp_path / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    if not os.path.isabs(lib) or subprocess.run(
            [emulator.compiler(), *emulator.SANITIZE, str(probe), "-o", str(tmp_path / "probe")],
            capture_output=True).returncode != 0:
        pytest.skip(f"{emulator.compiler()} has no AddressSanitizer")
    env = {**os.environ, "LD_PRELOAD": lib, "XPNN_EMULATION_SANITIZE": "1",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1",
           "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           __file__, "-k", "not sanitizer and not cubin and not default_std "
                                           "and not every_backend and not compiled_source"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout and "ERROR: AddressSanitizer" not in done.stderr
