"""cupy.cuda.runtime (cupy_backends/cuda/api/runtime.pyx): the calls xpnn and its tests use."""
from .. import _double

is_hip = False
errorInvalidDevice = 101


class CUDARuntimeError(RuntimeError):
    _NAMES = {101: ("cudaErrorInvalidDevice", "invalid device ordinal")}

    def __init__(self, status):
        self.status = status
        name, text = self._NAMES.get(status, ("cudaErrorUnknown", "unknown error"))
        super().__init__(f"{name}: {text}")


def getDeviceCount() -> int:
    return _double.DEVICE_COUNT


def getDevice() -> int:
    return _double.current_device()


def _check(device) -> int:
    device = int(device)
    if not 0 <= device < _double.DEVICE_COUNT:
        raise CUDARuntimeError(errorInvalidDevice)
    return device


def setDevice(device) -> None:
    _double.set_current_device(_check(device))


def deviceGetPCIBusId(device) -> str:
    """runtime.pyx `deviceGetPCIBusId`: the device's PCI bus id, '0000:17:00.0'."""
    return _double.pci_bus_id(_check(device))


def memGetInfo() -> tuple[int, int]:
    """(free, total) bytes of the *current* device; the pool's cached blocks count as used."""
    m, d = _double.machine, getDevice()
    return m.memory_limit[d] - m.used[d] - m.cached[d], m.memory_limit[d]


def getDeviceProperties(device) -> dict:
    device = _check(device)
    return {"name": f"CuPy Double GPU {device}".encode(), "totalGlobalMem":
            _double.machine.memory_limit[device], "major": 8, "minor": 0,
            "multiProcessorCount": 108, "maxThreadsPerBlock": 1024,
            "maxThreadsDim": (1024, 1024, 64), "maxGridSize": (2**31 - 1, 65535, 65535),
            "sharedMemPerBlock": 48 << 10, "warpSize": 32,
            "pciBusID": int(_double.pci_bus_id(device).split(":")[1], 16)}


def deviceCanAccessPeer(device, peer) -> int:
    _check(device), _check(peer)
    return int(_double.machine.peer_access and device != peer)


def deviceSynchronize() -> None:
    _double.record_sync(detected=False)   # CuPy's syncdetect does not see raw runtime calls


def runtimeGetVersion() -> int:
    return 12080


def driverGetVersion() -> int:
    return 12080
