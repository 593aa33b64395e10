"""The CuPy test double (tests/cupy_double) follows CuPy's rules: each rule, asserted.

Skipped when a real CuPy is in use (or the double is off): these tests read the double's
counters and knobs through the `cupy_double` fixture."""
import subprocess
import sys
import warnings

import array_api_compat
import numpy as np
import pytest

from .conftest import USING_CUPY_DOUBLE, cupy_double_env

pytestmark = pytest.mark.skipif(not USING_CUPY_DOUBLE,
                                reason="tests the CuPy test double, which is not in use")

PEER_ERROR = (r"The device where the array resides \(1\) is different from the current "
              r"device \(0\)\. Peer access is unavailable between these devices\.")


@pytest.fixture
def cp(cupy_double):
    import cupy
    if cupy_double.DEVICE_COUNT < 2:
        pytest.skip("the double's own tests use two GPUs (CUPY_DOUBLE_DEVICES=1 here)")
    return cupy


@pytest.fixture
def cupyx(cupy_double):
    import cupyx
    return cupyx


def on(cp, device, make):
    with cp.cuda.Device(device):
        return make()


# -- 1. devices ------------------------------------------------------------------------------

def test_devices_and_the_current_device(cp, cupy_double):
    rt = cp.cuda.runtime
    assert rt.getDeviceCount() == cupy_double.DEVICE_COUNT and cp.cuda.is_available()
    assert rt.getDevice() == 0
    with cp.cuda.Device(1) as dev:
        assert rt.getDevice() == 1 and dev.id == 1 and cp.cuda.Device().id == 1
        with cp.cuda.Device(0):
            assert rt.getDevice() == 0
        assert rt.getDevice() == 1
    assert rt.getDevice() == 0
    cp.cuda.Device(1).use()
    assert rt.getDevice() == 1
    with pytest.raises(rt.CUDARuntimeError, match="cudaErrorInvalidDevice"):
        cp.cuda.Device(cupy_double.DEVICE_COUNT).use()
    props = rt.getDeviceProperties(1)
    assert isinstance(props["name"], bytes) and props["totalGlobalMem"] > 0
    assert cp.cuda.Device(0).compute_capability == f"{props['major']}{props['minor']}"
    assert cp.cuda.Device(cp.cuda.Device(1)) == cp.cuda.Device(1) != cp.cuda.Device(0)


@pytest.mark.parametrize("make", [
    lambda cp: cp.zeros(3), lambda cp: cp.empty((2, 2)), lambda cp: cp.ones(3, cp.float32),
    lambda cp: cp.full((2,), 7.0), lambda cp: cp.arange(5), lambda cp: cp.eye(2),
    lambda cp: cp.asarray(np.ones(3)), lambda cp: cp.asarray([1.0, 2.0]),
    lambda cp: cp.random.RandomState(0).normal(size=3)],
    ids=["zeros", "empty", "ones", "full", "arange", "eye", "asarray-host", "asarray-list",
         "random"])
def test_new_arrays_live_on_the_current_device(cp, make):
    for device in (0, 1):
        a = on(cp, device, lambda: make(cp))
        assert a.device.id == a.data.device_id == device
        assert a.__dlpack_device__() == (2, device)


def test_like_functions_and_results_use_the_current_device_not_the_arguments(cp):
    x = cp.ones(4)                                  # on device 0
    with cp.cuda.Device(1):
        # CuPy's *_like read only shape and dtype: they allocate on the current device.
        assert all(f(x).device.id == 1 for f in (cp.zeros_like, cp.empty_like, cp.ones_like))
        y = cp.ones(4)
        assert (y * 2).device.id == 1 and cp.sum(y).device.id == 1


# -- 2. mixing devices -------------------------------------------------------------------------

@pytest.mark.parametrize("op", [
    lambda cp, a, b: a + b, lambda cp, a, b: cp.sum(b), lambda cp, a, b: a @ b.reshape(4, 1),
    lambda cp, a, b: b.astype(cp.float32), lambda cp, a, b: a.__iadd__(b),
    lambda cp, a, b: a.__setitem__(slice(None), b), lambda cp, a, b: b[cp.asarray([0, 1])],
    lambda cp, a, b: cp.maximum(a, b), lambda cp, a, b: b.fill(3)],
    ids=["add", "sum", "matmul", "astype", "iadd", "setitem", "gather", "maximum", "fill"])
def test_kernels_refuse_arrays_of_another_device(cp, op):
    a, b = cp.ones(4), on(cp, 1, lambda: cp.ones(4))
    with pytest.raises(ValueError, match=PEER_ERROR):
        op(cp, a, b)


def test_views_and_explicit_copies_cross_devices(cp, cupy_double):
    b = on(cp, 1, lambda: cp.arange(6.0))
    views = [b[1:], b.reshape(2, 3), b.reshape(2, 3).T, b[None], cp.expand_dims(b, 0)]
    assert all(v.device.id == 1 for v in views)     # no kernel: no device check
    copied = b.copy()                               # peer-to-peer memcpy to the current device
    assert copied.device.id == 0 and cp.asarray(b).device.id == 0
    assert cupy_double.stats()["d2d_bytes"] == 2 * b.nbytes
    np.testing.assert_array_equal((copied + 1).get(), np.arange(6.0) + 1)


def test_peer_access_when_modelled_as_possible(cp, cupy_double):
    cupy_double.enable_peer_access(True)
    a, b = cp.ones(4), on(cp, 1, lambda: cp.ones(4))
    assert cp.cuda.runtime.deviceCanAccessPeer(0, 1) == 1
    with pytest.warns(cp._core.PerformanceWarning, match="Peer access has been activated"):
        c = a + b
    assert c.device.id == 0


# -- 3. host arrays ----------------------------------------------------------------------------

def test_no_implicit_host_conversion(cp, cupy_double):
    x = cp.arange(3.0)
    with pytest.raises(TypeError, match=r"Implicit conversion to a NumPy array is not allowed\. "
                                        r"Please use `\.get\(\)` to construct a NumPy array"):
        np.asarray(x)
    host = np.ones(3)
    for op in (lambda: x + host, lambda: host + x, lambda: cp.sum(host), lambda: host * x,
               lambda: cp.concatenate([x, host])):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            op()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[...] = host
    x[...] = np.array(5.0)                          # 0-d: filled with its value
    assert x.tolist() == [5.0, 5.0, 5.0]
    y = cp.asarray(host)                            # the explicit way in
    x.set(np.zeros(3))
    assert cupy_double.stats()["h2d_bytes"] == 2 * host.nbytes and y.sum().item() == 3.0


# -- 4. synchronisation ------------------------------------------------------------------------

@pytest.mark.parametrize("sync", [
    lambda cp, x: x.get(), lambda cp, x: x[0].item(), lambda cp, x: x.tolist(),
    lambda cp, x: float(x[0]), lambda cp, x: int(x[0]), lambda cp, x: bool(x[0]),
    lambda cp, x: repr(x), lambda cp, x: str(x), lambda cp, x: cp.asnumpy(x),
    lambda cp, x: x[x > 1], lambda cp, x: cp.nonzero(x),
    lambda cp, x: cp.cuda.Device(0).synchronize()],
    ids=["get", "item", "tolist", "float", "int", "bool", "repr", "str", "asnumpy", "mask",
         "nonzero", "device"])
def test_synchronisations_are_counted_and_can_be_forbidden(cp, cupyx, cupy_double, sync):
    x = cp.arange(4.0)
    before = cupy_double.stats()["syncs"]
    sync(cp, x)
    assert cupy_double.stats()["syncs"] == before + 1
    with cupyx.allow_synchronize(False):
        with pytest.raises(cupyx.DeviceSynchronized, match="synchronization was detected"):
            sync(cp, x)


def test_stream_synchronize_is_counted_but_not_detected(cp, cupyx, cupy_double):
    with cupyx.allow_synchronize(False):          # stream.pyx does not call syncdetect
        cp.cuda.get_current_stream().synchronize()
    assert cupy_double.stats()["syncs"] == 1


def test_device_work_does_not_synchronize(cp, cupyx, cupy_double):
    with cupyx.allow_synchronize(False):
        x = cp.asarray(np.arange(6.0)).reshape(2, 3)
        y = cp.maximum(x @ x.T, 0).sum(axis=0) + cp.zeros(2)
        with cupyx.allow_synchronize(True):
            y.get()
        with pytest.raises(cupyx.DeviceSynchronized):
            y.get()
    assert cupy_double.stats()["syncs"] == 1


# -- 5. raw kernels ----------------------------------------------------------------------------

SCALE = r'''
#include "scale_factor.h"
typedef long long idx_t;
#define SCALE_ARGS const float* __restrict__ x, float* y, idx_t n
extern "C" __global__ void scale(SCALE_ARGS, float alpha, int bias) {
    for (idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (idx_t)blockDim.x * gridDim.x)
        y[i] = FACTOR * alpha * x[i] + bias;
}
'''


@pytest.fixture
def scale_module(cp, tmp_path):
    (tmp_path / "scale_factor.h").write_text("#define FACTOR 2.0f\n")
    return cp.RawModule(code=SCALE, options=("-std=c++14", f"-I{tmp_path}")), tmp_path


def test_raw_kernels_run_the_cuda_source_and_log_what_cupy_compiles(cp, cupy_double, scale_module):
    module, include_dir = scale_module
    options = ("-std=c++14", f"-I{include_dir}")
    log = cupy_double.compile_log()
    before = len(log)
    kernel = module.get_function("scale")
    assert len(log) == before + 1 and log[-1][:3] == (SCALE, options, 0)
    assert "-ftz=true" in log[-1].cupy_options
    x, y = cp.arange(100, dtype=cp.float32), cp.empty(100, cp.float32)
    kernel((3,), (32,), (x, y, 100, np.float32(0.5), np.int32(1)))   # 96 threads, 100 outputs
    np.testing.assert_array_equal(y.get(), np.arange(100, dtype=np.float32) + 1)
    assert cupy_double.stats()["launches"][-1] == cupy_double.Launch("raw", "scale", 0, 800)
    cp.RawModule(code=SCALE, options=options).get_function("scale")
    assert len(log) == before + 1                   # same code and options: compiled once
    with cp.cuda.Device(1):
        module.get_function("scale")
    assert log[-1].device == 1                      # ...per device
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="CUDA_ERROR_NOT_FOUND"):
        module.get_function("no_such_kernel")


def test_raw_kernels_follow_edited_includes_though_cupys_request_does_not_change(
        cp, cupy_double, tmp_path):
    (tmp_path / "scale_factor.h").write_text("#define FACTOR 3.0f\n")
    kernel = cp.RawModule(code=SCALE, options=(f"-I{tmp_path}",)).get_function("scale")
    x = cp.ones(4, cp.float32)
    y = cp.empty_like(x)
    kernel((1,), (4,), (x, y, 4, np.float32(1), np.int32(0)))
    assert y.get().tolist() == [3.0] * 4            # built from the header as it is now...
    assert cupy_double.compile_log()[-1].code == SCALE   # ...yet CuPy is asked the same text


@pytest.mark.parametrize("args,error,match", [
    (lambda cp, x, y: (x.astype(cp.float64), y, 4, np.float32(1), np.int32(0)),
     "KernelArgumentError", "needs float32 data, got float64"),
    (lambda cp, x, y: (x, y, 4, 1.0, np.int32(0)), "KernelArgumentError",
     "float32 parameter, got a float64 value"),        # CuPy passes a Python float as double
    (lambda cp, x, y: (x, y, 4, np.float32(1), 0), "KernelArgumentError",
     "int32 parameter, got a int64 value"),            # ...and a Python int as long long
    (lambda cp, x, y: (x, y, np.int32(4), np.float32(1), np.int32(0)), "KernelArgumentError",
     "int64 parameter, got a int32 value"),
    (lambda cp, x, y: (cp.ones(8, cp.float32)[::2], y, 4, np.float32(1), np.int32(0)),
     "KernelArgumentError", "not C-contiguous"),
    (lambda cp, x, y: (x, y, 4, np.float32(1)), "KernelArgumentError", "takes 5 arguments"),
    (lambda cp, x, y: (x, 4, 4, np.float32(1), np.int32(0)), "KernelArgumentError",
     "is a pointer"),
    (lambda cp, x, y: (np.ones(4, np.float32), y, 4, np.float32(1), np.int32(0)), "TypeError",
     "Only numpy.ndarrays of size one can be passed by value"),
    (lambda cp, x, y: (on(cp, 1, lambda: cp.ones(4, cp.float32)), y, 4, np.float32(1),
                       np.int32(0)), "CUDADriverError", "CUDA_ERROR_ILLEGAL_ADDRESS"),
], ids=["array-dtype", "python-float", "python-int", "narrow-int", "strided", "count",
        "scalar-for-pointer", "host-array", "other-device"])
def test_raw_kernels_refuse_what_a_gpu_would_misread(cp, scale_module, args, error, match):
    kernel = scale_module[0].get_function("scale")
    x, y = cp.ones(4, cp.float32), cp.zeros(4, cp.float32)
    errors = {"KernelArgumentError": cp._raw.KernelArgumentError, "TypeError": TypeError,
              "CUDADriverError": cp.cuda.driver.CUDADriverError}
    with pytest.raises(errors[error], match=match):
        kernel((1,), (4,), args(cp, x, y))
    assert y.get().tolist() == [0.0] * 4            # nothing ran


def test_raw_kernel_launch_limits(cp, scale_module):
    kernel = scale_module[0].get_function("scale")
    x, y = cp.ones(4, cp.float32), cp.zeros(4, cp.float32)
    args = (x, y, 4, np.float32(1), np.int32(0))
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="CUDA_ERROR_INVALID_VALUE"):
        kernel((1,), (2048,), args)
    with pytest.raises(TypeError, match="expected tuple"):
        kernel(1, (4,), args)


# -- 6. memory ---------------------------------------------------------------------------------

def test_out_of_memory_and_memory_info(cp, cupy_double):
    import gc
    gc.collect()
    cp.get_default_memory_pool().free_all_blocks()
    cupy_double.set_memory_limit(1 << 20, device=0)
    used = cupy_double.machine.used[0]
    free, total = cp.cuda.runtime.memGetInfo()
    assert total == 1 << 20 and free == total - used
    with pytest.raises(cp.cuda.memory.OutOfMemoryError,
                       match=rf"Out of memory allocating 2,097,152 bytes \(allocated so far: "
                             rf"{used:,} bytes\)\."):
        cp.zeros(1 << 18)                                    # 2 MiB of float64
    a = cp.zeros(1 << 16)                                    # 512 KiB
    views = [a[1:], a.reshape(256, 256), a[::2]]             # views take no memory
    assert cp.cuda.runtime.memGetInfo()[0] == free - a.nbytes
    with cp.cuda.Device(1):
        cp.zeros(1 << 18)                                    # device 1 keeps its own budget
    del a, views
    gc.collect()
    assert cp.get_default_memory_pool().used_bytes() == used
    assert cp.cuda.runtime.memGetInfo()[0] == free - (1 << 19)   # the pool keeps the block
    cp.get_default_memory_pool().free_all_blocks()
    assert cp.cuda.runtime.memGetInfo()[0] == free


# -- 7. random numbers -------------------------------------------------------------------------

def test_random_numbers_are_made_on_the_current_device_by_their_own_generator(cp):
    with cp.cuda.Device(1):
        rs = cp.random.RandomState(5)
        a = rs.normal(0.0, 2.0, size=(3, 4), dtype=cp.float32)
        u = rs.uniform(size=1000)
        cp.random.seed(7)
        b = cp.random.standard_normal((3, 4), dtype=cp.float32)
    assert a.device.id == b.device.id == 1 and a.dtype == cp.float32 and a.shape == (3, 4)
    assert 0 <= u.get().min() and u.get().max() < 1    # u is on device 1: read it back
    np.testing.assert_array_equal(
        a.get(), on(cp, 1, lambda: cp.random.RandomState(5).normal(0.0, 2.0, (3, 4), cp.float32)).get())
    assert not np.allclose(on(cp, 1, lambda: cp.random.RandomState(5).standard_normal(4)).get(),
                           np.random.default_rng(5).standard_normal(4))   # not NumPy's stream
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="made on device 1"):
        rs.normal(size=2)                            # device 0 is current here
    with pytest.raises(TypeError, match="float32 and float64"):
        cp.random.normal(size=2, dtype=cp.int32)


# -- 8. counters -------------------------------------------------------------------------------

def test_launches_and_transfers_are_counted(cp, cupy_double):
    x = cp.asarray(np.ones(10, np.float32))          # host -> device, no kernel
    y = x + x                                        # one elementwise kernel: 40 in + 40 out
    y.sum()
    x.reshape(2, 5).T                                # views: nothing
    st = cupy_double.stats()
    assert st["launches"] == [cupy_double.Launch("elementwise", "add", 0, 80),
                              cupy_double.Launch("reduction", "sum", 0, 44)]
    assert st["h2d_bytes"] == 40 and st["syncs"] == 0
    cupy_double.reset_stats()
    assert cupy_double.stats()["launches"] == []


# -- 9. the namespace and array-api-compat on it ----------------------------------------------

def test_array_api_compat_works_on_the_double(cp):
    import array_api_compat.cupy as xp
    x = cp.arange(6.0).reshape(2, 3)
    assert array_api_compat.array_namespace(x) is xp and array_api_compat.is_cupy_array(x)
    assert array_api_compat.device(x) == cp.cuda.Device(0)
    moved = array_api_compat.to_device(x, cp.cuda.Device(1))
    assert moved.device.id == 1 and xp.asarray([1, 2], device=cp.cuda.Device(1)).device.id == 1
    # array-api-compat ignores device= in CuPy's creation functions: the current device wins.
    assert xp.zeros(3, device=cp.cuda.Device(1)).device.id == 0
    assert xp.std(x, correction=1).item() == pytest.approx(np.arange(6.0).std(ddof=1))
    assert xp.matmul(x, xp.matrix_transpose(x)).shape == (2, 2)
    np.testing.assert_array_equal(xp.unique_values(xp.asarray([3, 1, 3])).get(), [1, 3])
    assert cp.get_array_module(x) is cp and cp.get_array_module(np.ones(1)) is np
    assert cp.__version__.endswith("+double") and cp.linalg.norm(x).item() > 0


def test_scatter_add_is_unbuffered(cp, cupyx):
    a = cp.zeros(3)
    cupyx.scatter_add(a, cp.asarray([0, 0, 2]), cp.asarray([1.0, 2.0, 5.0]))
    assert a.tolist() == [3.0, 0.0, 5.0]


def test_subprocesses_get_the_double_through_their_environment():
    out = subprocess.run([sys.executable, "-c", "import cupy; print(cupy.__version__)"],
                         env=cupy_double_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("+double")


# -- NCCL and events (cupy_backends/cuda/libs/nccl.pyx, cupy/cuda/stream.pyx) ------------------

def _ranks_on(cp, devices, body):
    """body(rank, communicator) on one thread per rank, each with its device current (NCCL
    ranks meet in ncclCommInitRank); returns each rank's result or exception."""
    import threading
    uid, results = cp.cuda.nccl.get_unique_id(), [None] * len(devices)

    def run(rank):
        try:
            with cp.cuda.Device(devices[rank]):
                results[rank] = body(rank, cp.cuda.nccl.NcclCommunicator(len(devices), uid, rank))
        except Exception as e:            # noqa: BLE001 - returned to the test
            results[rank] = e
    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_nccl_ids_are_cupys_tuples_of_chars(cp):
    uid = cp.cuda.nccl.get_unique_id()
    assert type(uid) is tuple and len(uid) == 128 and all(-128 <= c <= 127 for c in uid)
    assert uid != cp.cuda.nccl.get_unique_id()
    with pytest.raises(TypeError, match=r"Argument 'commId' has incorrect type \(expected tuple, got bytes\)"):
        cp.cuda.nccl.NcclCommunicator(1, bytes(128), 0)
    with pytest.raises(AssertionError):
        cp.cuda.nccl.NcclCommunicator(1, uid[:64], 0)


def test_nccl_all_reduce_sums_over_the_ranks_and_completes_on_the_device(cp):
    def body(rank, comm):
        buf = cp.asarray(np.arange(5, dtype=np.float32) * (rank + 1))
        comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, cp.cuda.nccl.NCCL_FLOAT32,
                       cp.cuda.nccl.NCCL_SUM, cp.cuda.get_current_stream().ptr)
        done = cp.cuda.Event(disable_timing=True)
        done.record()
        done.synchronize()
        assert done.done
        return cp.asnumpy(buf), buf.device.id
    results = _ranks_on(cp, [0, 1], body)
    for rank, (summed, device) in enumerate(results):
        np.testing.assert_array_equal(summed, np.arange(5, dtype=np.float32) * 3)
        assert device == rank


def test_nccl_refuses_two_ranks_on_one_gpu(cp):
    results = _ranks_on(cp, [1, 1], lambda rank, comm: comm)
    for error in results:
        assert isinstance(error, cp.cuda.nccl.NcclError), results
        assert str(error) == "NCCL_ERROR_INVALID_USAGE: invalid usage (run with NCCL_DEBUG=WARN for details)"
    assert cp.cuda.runtime.deviceGetPCIBusId(0) != cp.cuda.runtime.deviceGetPCIBusId(1)
    assert cp.cuda.Device(1).pci_bus_id == cp.cuda.runtime.deviceGetPCIBusId(1)


def test_nccl_waits_for_its_peers_and_abort_releases_it(cp):
    """A one-rank-short all-reduce never finishes (its event stays not done) until aborted."""
    import time
    uid = cp.cuda.nccl.get_unique_id()
    comm = cp.cuda.nccl.NcclCommunicator(1, uid, 0)
    comm._ndev = 2                       # as if a peer had joined, then died
    buf = cp.ones(3, dtype=cp.float64)
    comm.allReduce(buf.data.ptr, buf.data.ptr, 3, cp.cuda.nccl.NCCL_FLOAT64, cp.cuda.nccl.NCCL_SUM, 0)
    event = cp.cuda.Event(block=False, disable_timing=True, interprocess=False)
    event.record(cp.cuda.get_current_stream())
    time.sleep(0.05)
    assert not event.done
    comm.abort()
    event.synchronize()
    assert event.done
    np.testing.assert_array_equal(cp.asnumpy(buf), np.ones(3))      # left as it was


def test_events_take_cupys_arguments(cp):
    with pytest.raises(ValueError, match="Timing must be disabled for interprocess events"):
        cp.cuda.Event(interprocess=True)
    event = cp.cuda.get_current_stream().record()
    assert isinstance(event, cp.cuda.Event) and event.done


def test_empty_memory_is_poisoned_so_unwritten_outputs_show(cp):
    """cupy.empty's memory is a reused block's garbage: the double's is every byte 0xFF."""
    assert np.isnan(cp.empty((3, 4), cp.float32).get()).all()
    assert np.isnan(cp.empty_like(cp.zeros(5)).get()).all()
    assert (cp.empty(4, cp.int32).get() == -1).all() and (cp.ndarray((2,), cp.int64).get() == -1).all()
    assert (cp.zeros(3).get() == 0).all()               # zeros are zeros
