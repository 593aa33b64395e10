"""Per-op forward and backward times: xpnn vs PyTorch vs the assignment-style baseline,
on the CPU and (when CuPy sees one) the GPU.

    pytest bench/test_ops.py --benchmark-only --benchmark-group-by=param:case
"""
import pytest

from cases import OP_CASES, prepare_op

CASES = [f"{name}/{direction}" for name in OP_CASES for direction in ("forward", "backward")]


@pytest.mark.parametrize("case", CASES)
def test_op(timed, case, impl, device):
    name, direction = case.split("/")
    timed(prepare_op(name, direction, impl, device), impl, device)
