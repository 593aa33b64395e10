"""One full training step (forward, backward, Adam update) of the MNIST CNN (N=100) and of
the CIFAR-10 ThreeLayerConvNet (N=50, N=128), float32.

    pytest bench/test_steps.py --benchmark-only --benchmark-group-by=param:case
"""
import pytest

from cases import STEP_CASES, prepare_step


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step(timed, case, impl, device):
    timed(prepare_step(case, impl, device), impl, device)
