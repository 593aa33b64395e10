"""cupy.cuda.driver: CUDADriverError, raised for what would fail in the CUDA driver."""


class CUDADriverError(RuntimeError):
    def __init__(self, name: str, text: str, detail: str = ""):
        self.status = name
        super().__init__(f"{name}: {text}" + (f" ({detail})" if detail else ""))
