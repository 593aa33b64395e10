"""How the ranks of a data-parallel job sum their gradients: MPI's all-reduce on host buffers
between CPU processes, NCCL's on the device between GPUs (one rank per GPU). A transport
takes the job's Communicator and uses its public collectives and deadlines; DistributedError
is what every part of the distributed runtime raises when the ranks disagree or one stops
answering.
"""
from __future__ import annotations

import numpy as np


class DistributedError(RuntimeError):
    """The ranks of a distributed run disagree, or one of them stopped answering."""


class MpiTransport:
    """Sums a host NumPy buffer over the ranks with MPI's all-reduce, in place."""

    def __init__(self, comm):
        self.comm = comm

    def allreduce(self, buf, what):
        from mpi4py import MPI
        buf = np.ascontiguousarray(buf)
        self.comm.wait(self.comm.mpi.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)
        return buf


class NcclTransport:
    """Sums a CuPy buffer over the GPUs with NCCL, in place on the device (no host copy).

    As ChainerMN's pure-NCCL communicator: rank 0 makes NCCL's unique id, MPI broadcasts it,
    and every rank joins the NCCL communicator on its own GPU. `nccl` is `cupy.cuda.nccl`
    unless a test gives a stand-in."""

    def __init__(self, comm, backend, nccl=None):
        import cupy
        if nccl is None:
            from cupy.cuda import nccl
        if not getattr(nccl, "available", True):
            raise RuntimeError("distributed GPU training needs NCCL, which CuPy cannot load here; "
                               "install it (pip install nvidia-nccl-cu12, or -cu13 for CUDA 13, "
                               "as CuPy's installation guide says) or train on device cpu")
        self.comm, self.backend, self.nccl, self.cupy = comm, backend, nccl, cupy
        self.dtypes = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        self._one_gpu_per_rank(comm, backend, cupy)
        uid = nccl.get_unique_id() if comm.is_writer else None
        uid = comm.bcast(uid, "the NCCL id broadcast")
        with backend:
            self.nccl_comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)

    @staticmethod
    def _one_gpu_per_rank(comm, backend, cupy) -> None:
        """NCCL refuses two ranks on one GPU ("Duplicate GPU detected"); so does this, first,
        with what to change. GPUs are compared by PCI bus id on each host: device numbers
        depend on each process's CUDA_VISIBLE_DEVICES."""
        import socket
        if comm.size == 1:
            return
        here = (socket.gethostname(), cupy.cuda.runtime.deviceGetPCIBusId(backend.index),
                cupy.cuda.runtime.getDeviceCount())
        everyone = comm.allgather(here, "the GPU check")
        for rank, (host, bus, _) in enumerate(everyone):
            sharing = [r for r, (h, b, _) in enumerate(everyone) if (h, b) == (host, bus)]
            if len(sharing) > 1:
                on_host = [r for r, (h, _, _) in enumerate(everyone) if h == host]
                gpus = max(n for h, _, n in everyone if h == host)
                raise DistributedError(
                    f"ranks {', '.join(map(str, sharing))} would share one GPU (PCI bus {bus} on "
                    f"{host}): NCCL refuses two ranks on one GPU. {host} runs {len(on_host)} "
                    f"ranks of this job and its processes see {gpus} GPU(s): give each rank "
                    "its own GPU (at most as many ranks per node as GPUs; check "
                    "CUDA_VISIBLE_DEVICES), or train on device cpu")

    def allreduce(self, buf, what):
        cupy = self.cupy
        with self.backend:
            if buf.device.id != self.backend.index:
                raise DistributedError(f"the gradient buffer is on cuda:{buf.device.id}, but this "
                                       f"rank's NCCL communicator is on {self.backend.label}")
            buf = cupy.ascontiguousarray(buf)
            stream = cupy.cuda.get_current_stream()
            self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                                     self.dtypes[str(buf.dtype)], self.nccl.NCCL_SUM, stream.ptr)
            # NCCL runs on the stream; wait for it with the same deadline as MPI, and abort the
            # NCCL communicator (which frees the kernel stuck waiting for a dead peer) past it.
            done = cupy.cuda.Event(disable_timing=True)
            done.record(stream)
            self.comm.poll(lambda: done.done, what, on_timeout=self.nccl_comm.abort)
        return buf
