"""JAX arrays: "jax" (= "jax:cpu"), "jax:cpu", "jax:gpu" (= "jax:gpu:0"), "jax:gpu:N".

The layers run eagerly on `jax.numpy` (every operation dispatched as it comes; nothing is
jitted, so the layer code stays the same portable code). JAX's arrays are immutable: the
portable code never writes into an array. JAX computes in float32 unless its `jax_enable_x64`
option is on; rather than turn that on for the whole process, this backend's context
(`with backend:`, which the models, the Solver and every public layer enter) turns it on
for the code it runs, and makes the backend's device JAX's default one. Random numbers:
NumPy's PCG64 on the host, moved to the device (the same draws as on every library).
"""
from __future__ import annotations

import threading

import numpy as np

from ..backend import Backend, GlobalGenerator

DEVICES = "jax, jax:cpu, jax:gpu, jax:gpu:N (JAX)"
HAS_CONTEXT = True


def canonical(text: str) -> str:
    rest = text.split(":", 1)[1] if ":" in text else "cpu"
    if rest == "cpu":
        return "jax:cpu"
    if rest in ("gpu", "cuda"):
        return "jax:gpu:0"
    for kind in ("gpu:", "cuda:"):
        if rest.startswith(kind) and rest[len(kind):].isdigit():
            return f"jax:gpu:{int(rest[len(kind):])}"
    raise ValueError(f"JAX has no device {rest!r}")


def _device_string(device) -> str:
    return "jax:cpu" if device.platform == "cpu" else f"jax:gpu:{device.id}"


def array_device(x):
    import array_api_compat
    if not array_api_compat.is_jax_array(x):
        return None
    devices = x.devices()
    return _device_string(next(iter(devices))) if len(devices) == 1 else None


def make_backend(device: str) -> "JaxBackend":
    import jax
    if device == "jax:cpu":
        return JaxBackend(device, jax.devices("cpu")[0])
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    index = int(device.rsplit(":", 1)[1])
    if index >= len(gpus):
        raise ValueError(f"device {device!r} is not there: JAX {jax.__version__} sees {len(gpus)} "
                         "GPU(s) (a CPU-only jaxlib sees none: pip install 'jax[cuda12]'); use 'jax:cpu'"
                         + (f" or jax:gpu:0 to jax:gpu:{len(gpus) - 1}" if gpus else ""))
    return JaxBackend(device, gpus[index])


class JaxBackend(Backend):
    """JAX on one device, computing in float64 when asked (inside its context)."""


    def __init__(self, label: str, device):
        import jax
        import jax.numpy as jnp
        self.jax, self.xp, self.label, self.device = jax, jnp, label, device
        self._entered = threading.local()      # each thread's stack of entered contexts
        self.rng = GlobalGenerator(self)

    def __enter__(self):
        import contextlib
        stack = contextlib.ExitStack()
        stack.enter_context(self.jax.enable_x64(True))
        stack.enter_context(self.jax.default_device(self.device))
        self._entered.__dict__.setdefault("stack", []).append(stack)
        return self

    def __exit__(self, *exc):
        return self._entered.stack.pop().__exit__(*exc)

    def to_device(self, x, dtype=None):
        with self:
            out = x if self.owns(x) else self.jax.device_put(np.asarray(x), self.device)
            return out if dtype is None else self.xp.astype(out, self.dtype(dtype), copy=False)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def owns(self, x) -> bool:
        return array_device(x) == self.label

    def synchronize(self) -> None:
        # Work is queued per device in order: waiting for a new array waits for the rest.
        self.jax.device_put(0.0, self.device).block_until_ready()

    def memory_free(self):
        if self.device.platform == "cpu":
            return None
        stats = self.device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else limit - stats.get("bytes_in_use", 0)
