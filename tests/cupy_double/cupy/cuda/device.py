"""cupy.cuda.Device (cupy/cuda/device.pyx): a device id and a context manager that makes it
current for the host thread (and restores the previous one on exit)."""
from .. import _double
from . import runtime


class Device:
    def __init__(self, device=None):
        # CuPy: None means the current device; anything int()-able (a Device too) is an id.
        self.id = runtime.getDevice() if device is None else int(device)
        self._stack = []

    def __int__(self):
        return self.id

    __index__ = __int__

    def __enter__(self):
        self._stack.append(runtime.getDevice())
        runtime.setDevice(self.id)
        return self

    def __exit__(self, *exc):
        runtime.setDevice(self._stack.pop())

    def use(self):
        runtime.setDevice(self.id)
        return self

    def synchronize(self):
        _double.record_sync()

    @property
    def compute_capability(self) -> str:
        props = runtime.getDeviceProperties(self.id)
        return f"{props['major']}{props['minor']}"

    @property
    def pci_bus_id(self) -> str:
        return runtime.deviceGetPCIBusId(self.id)

    @property
    def mem_info(self):
        with self:
            return runtime.memGetInfo()

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("cuda", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def get_device_id() -> int:
    return runtime.getDevice()
