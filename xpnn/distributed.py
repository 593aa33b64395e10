"""Data-parallel training and sweeps on MPI: the import path people use; the code lives in
xpnn.parallel (distributed.py, transports.py, settings.py)."""
from .parallel.distributed import (ABORT_GRACE_SECONDS, DEFAULT_TIMEOUT, TIMEOUT_ENV,
                                   Communicator, Failed, communicator, launched_by_mpi,
                                   map_settings, rank_device, shard, timeout_from_environment)
from .parallel.settings import settings_differences, training_settings
from .parallel.transports import DistributedError, MpiTransport, NcclTransport

_timeout_from_environment = timeout_from_environment     # its name before it was public

__all__ = ["ABORT_GRACE_SECONDS", "DEFAULT_TIMEOUT", "TIMEOUT_ENV", "Communicator",
           "DistributedError", "Failed", "MpiTransport", "NcclTransport", "communicator",
           "launched_by_mpi", "map_settings", "rank_device", "settings_differences", "shard",
           "timeout_from_environment", "training_settings"]
