"""Per-op forward and backward times: xpnn vs PyTorch vs the assignment-style baseline,
on the CPU and (when CuPy sees one) the GPU.

    pytest bench/test_ops.py --benchmark-only --benchmark-group-by=param:case
"""
import pytest

from cases import OP_CASES, prepare_op

# A loss has no separate backward: softmax_loss returns the loss and its gradient together.
CASES = [f"{name}/{direction}" for name, spec in OP_CASES.items()
         for direction in (("forward",) if spec[0] == "softmax" else ("forward", "backward"))]


@pytest.mark.parametrize("case", CASES)
def test_op(timed, case, impl, device):
    name, direction = case.split("/")
    timed(prepare_op(name, direction, impl, device), impl, device)
