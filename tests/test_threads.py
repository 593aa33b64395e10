"""The BLAS thread policy, driven by step times the test chooses (no wall-clock asserts)."""
import numpy as np
import pytest
import threadpoolctl

from xpnn.threads import ThreadPolicy


def blas_threads():
    """The thread count of every loaded BLAS (NumPy's, and SciPy's once scikit-learn loaded
    it): the policy limits them all, so they must agree."""
    counts = {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}
    assert len(counts) == 1, counts
    return counts.pop()


def drive(policy, seconds_for):
    """Feed the policy one step time per call, as the Solver does after each step."""
    policy.record(seconds_for(policy.threads))


def test_probe_picks_one_thread_when_more_collapse():
    policy = ThreadPolicy(max_threads=2)
    policy.start()
    seen = set()
    for _ in range(2 * (policy.TRIALS + 1)):
        seen.add(policy.threads)
        assert blas_threads() == policy.threads          # the limit is really applied
        drive(policy, {1: 0.010, 2: 0.300}.get)          # 2 threads 30x slower: a busy core
    policy.finish()
    assert seen == {1, 2} and policy.threads == 1 and policy.history == [("start", 1)]


def test_more_threads_only_when_clearly_faster():
    for two_threads, expected in [(0.0095, 1), (0.006, 2)]:
        policy = ThreadPolicy(max_threads=2)
        policy.start()
        for _ in range(2 * (policy.TRIALS + 1)):
            drive(policy, {1: 0.010, 2: two_threads}.get)
        policy.finish()
        assert policy.threads == expected


def test_a_slowdown_triggers_a_new_probe():
    policy = ThreadPolicy(max_threads=2)
    policy.start()
    for _ in range(2 * (policy.TRIALS + 1)):
        drive(policy, {1: 0.010, 2: 0.006}.get)          # idle machine: 2 threads win
    assert policy.threads == 2
    drive(policy, {1: 0.010, 2: 0.300}.get)              # then another program starts
    for _ in range(2 * (policy.TRIALS + 1)):
        drive(policy, {1: 0.010, 2: 0.300}.get)
    policy.finish()
    assert policy.threads == 1 and policy.history == [("start", 2), ("slowdown", 1)]


def test_fixed_threads_never_probe_and_restore_after():
    before = blas_threads()
    policy = ThreadPolicy(threads=1, max_threads=2)
    policy.start()
    for _ in range(10):
        drive(policy, lambda n: 1.0)
        assert policy.threads == 1 and blas_threads() == 1
    policy.finish()
    assert blas_threads() == before and policy.choice == "1 (fixed)"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadPolicy(threads=bad)


def test_solver_measures_threads_on_the_cpu_and_honours_a_fixed_count():
    from xpnn import Solver
    from xpnn.data import get_data
    from xpnn.models import FullyConnectedNet
    data = get_data("digits")
    measured = Solver(FullyConnectedNet([16], input_dim=64, seed=0), data, num_epochs=2,
                      batch_size=50, verbose=False, seed=0)
    measured.train()
    assert [why for why, _ in measured.thread_policy.history] == ["start", "epoch"]
    fixed = Solver(FullyConnectedNet([16], input_dim=64, seed=0), data, num_epochs=2,
                   batch_size=50, verbose=False, seed=0, threads=1)
    fixed.train()
    assert fixed.thread_policy.history == [("fixed", 1)]
    # the thread count never changes the numbers: the same run, the same weights
    for k in fixed.model.params:
        np.testing.assert_array_equal(fixed.model.params[k], measured.model.params[k])


def test_cli_records_and_prints_the_thread_choice(tmp_path, capsys):
    import json
    from xpnn.cli import main
    out = tmp_path / "run"
    assert main(["train", "--model", "fc", "--hidden", "16", "--dataset", "digits", "--epochs", "1",
                 "--quiet", "--threads", "1", "--out", str(out)]) == 0
    assert "BLAS threads: 1 (fixed with --threads)" in capsys.readouterr().out
    session = json.loads((out / "metrics.json").read_text())["sessions"][0]
    assert session["threads"] == {"policy": "fixed", "threads": 1, "cores": session["threads"]["cores"],
                                  "choices": [{"when": "fixed", "threads": 1}]}
