"""PyTorch tensors: "torch" (= "torch:cpu"), "torch:cpu", "torch:cuda" (= "torch:cuda:0"),
"torch:cuda:N", "torch:mps".

The layers run on `array_api_compat.torch` (PyTorch's operations, its own CPU threads or CUDA
kernels); no tensor ever requires a gradient: xpnn computes every gradient itself. Random
numbers: NumPy's PCG64 on the host, moved to the device (the same draws as on every library).
"""
from __future__ import annotations

import numpy as np

from ..backend import Backend, GlobalGenerator

DEVICES = "torch, torch:cpu, torch:cuda, torch:cuda:N, torch:mps (PyTorch)"
HAS_CONTEXT = False


def canonical(text: str) -> str:
    rest = text.split(":", 1)[1] if ":" in text else "cpu"
    if rest == "cpu":
        return "torch:cpu"
    if rest == "mps":
        return "torch:mps"
    if rest == "cuda":
        return "torch:cuda:0"
    if rest.startswith("cuda:") and rest[5:].isdigit():
        return f"torch:cuda:{int(rest[5:])}"
    raise ValueError(f"PyTorch has no device {rest!r}")


def _device_string(device) -> str:
    """torch.device -> the canonical string."""
    if device.type == "cuda":
        return f"torch:cuda:{device.index or 0}"
    return f"torch:{device.type}"


def array_device(x):
    import array_api_compat
    return _device_string(x.device) if array_api_compat.is_torch_array(x) else None


def make_backend(device: str) -> "TorchBackend":
    import torch
    where = device.split(":", 1)[1]
    if where.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(where[5:])
        if index >= count:
            raise ValueError(f"device {device!r} is not there: this PyTorch {torch.__version__} sees "
                             f"{count} CUDA GPU(s){'' if torch.version.cuda else ' (a CPU-only build)'}; "
                             "use 'torch:cpu'" + (f" or torch:cuda:0 to torch:cuda:{count - 1}" if count else ""))
    if where == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not there: PyTorch's MPS backend (Apple GPUs) "
                         "is not available on this machine; use 'torch:cpu'")
    return TorchBackend(device)


class TorchBackend(Backend):
    """PyTorch on one of its devices."""


    def __init__(self, label: str):
        import torch
        import array_api_compat.torch as xp
        self.torch, self.xp, self.label = torch, xp, label
        self.device = torch.device(label.split(":", 1)[1])
        self.rng = GlobalGenerator(self)

    def to_device(self, x, dtype=None):
        if self.owns(x):
            out = x
        else:
            host = np.array(x)          # a copy: the tensor never shares the caller's memory
            out = self.torch.from_numpy(host).to(self.device)
        return out if dtype is None else self.xp.astype(out, self.dtype(dtype), copy=False)

    def to_host(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def owns(self, x) -> bool:
        return isinstance(x, self.torch.Tensor) and _device_string(x.device) == self.label

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            self.torch.mps.synchronize()

    def memory_free(self):
        if self.device.type == "cuda":
            return self.torch.cuda.mem_get_info(self.device)[0]
        return None

    def is_out_of_memory(self, error) -> bool:
        return isinstance(error, (MemoryError, self.torch.OutOfMemoryError))
