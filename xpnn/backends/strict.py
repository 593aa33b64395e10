"""array-api-strict: "array_api_strict" (its CPU_DEVICE), "array_api_strict:device1",
"array_api_strict:device2".

The Array API standard's reference namespace, on NumPy: nothing beyond the standard works, so
a model that trains here is portable. Its two extra devices are as real as its default one,
and catch code that mixes devices. Random numbers: NumPy's PCG64, moved there.
"""
from __future__ import annotations

from ..backend import ArrayApiBackend

DEVICES = "array_api_strict, array_api_strict:device1, array_api_strict:device2 (array-api-strict)"
HAS_CONTEXT = False
_NAMES = {"cpu_device": "CPU_DEVICE", "device1": "device1", "device2": "device2"}


def canonical(text: str) -> str:
    rest = text.split(":", 1)[1] if ":" in text else "cpu_device"
    if rest not in _NAMES and rest != "cpu":
        raise ValueError(f"array-api-strict has no device {rest!r}")
    return "array_api_strict" if rest in ("cpu", "cpu_device") else f"array_api_strict:{rest}"


def array_device(x):
    if not type(x).__module__.startswith("array_api_strict."):
        return None
    import array_api_strict as xs
    name = next(n for n in _NAMES.values() if x.device == xs.Device(n))
    return "array_api_strict" if name == "CPU_DEVICE" else f"array_api_strict:{name}"


def make_backend(device: str) -> ArrayApiBackend:
    import array_api_strict as xs
    name = "CPU_DEVICE" if device == "array_api_strict" else device.split(":", 1)[1]
    # The same class as for any Array-API namespace found from its arrays: the standard alone.
    backend = ArrayApiBackend(xs.asarray(0.0, device=xs.Device(name)))
    backend.label = device
    return backend
