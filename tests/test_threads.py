"""Thread counts change only the speed: the same numbers on any count (shards fixed by the
batch, summed in order), and a policy, driven by a clock the test controls, that follows the
machine's load on the training steps themselves (no wall-clock asserts)."""
import json
import warnings

import numpy as np
import pytest
import threadpoolctl

from xpnn.parallel import Sharded, ThreadPolicy, shards
from xpnn.backends.blas import available_cores


def blas_threads():
    """The thread count of every loaded BLAS (NumPy's, and SciPy's once scikit-learn loaded
    it): the policy limits them all, so they must agree."""
    counts = {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}
    assert len(counts) == 1, counts
    return counts.pop()


class Machine:
    """A fake clock; a training step takes `seconds_for[count in use]`."""

    def __init__(self, seconds_for):
        self.now, self.seconds_for, self.policy = 0.0, seconds_for, None
        self.threads_seen = []

    def clock(self):
        return self.now

    def steps(self, n):
        assert blas_threads() == 1                          # every shard on one BLAS thread
        for _ in range(n):
            self.threads_seen.append(self.policy.threads)
            self.policy.timed(lambda: setattr(self, "now", self.now + self.seconds_for[self.policy.threads]))


class Runners:
    threads = 5                                  # whatever the user had: put back after


def policy_on(machine, **kwargs):
    kwargs = {"split_batches": True, "runners": Runners(), **kwargs}
    machine.policy = ThreadPolicy(max_threads=2, clock=machine.clock, **kwargs)
    machine.policy.start()
    return machine.policy


def check_length(policy):
    return policy.ROUNDS * policy.max_threads * (policy.WARMUP + policy.TRIAL)


def test_one_thread_when_more_collapse():
    before = blas_threads()
    machine = Machine({1: 0.010, 2: 0.300})              # a busy core: 2 threads 30x slower
    policy = policy_on(machine)
    machine.steps(check_length(policy) + 50)
    policy.finish()
    assert set(machine.threads_seen) == {1, 2} and policy.threads == 1
    assert policy.checks == {"start": 1} and policy.step_ms == {1: 10.0, 2: 300.0}
    assert blas_threads() == before and policy._runners.threads == 5


def test_more_threads_only_when_clearly_faster_and_no_flip_flop():
    for two_threads, expected in [(0.009, 1), (0.006, 2)]:
        machine = Machine({1: 0.010, 2: two_threads})
        policy = policy_on(machine)
        policy.BUDGET = 1.0                                 # the intervals alone (see below)
        machine.steps(check_length(policy))
        for interval in (200, 400, 800, 1600, 3200, 3200):  # a steady machine: ever fewer checks
            assert policy.threads == expected and policy._interval == interval
            machine.steps(interval + check_length(policy))
        assert policy.threads == expected and policy.checks == {"start": 1, "periodic": 6}
        assert policy._runners.threads == expected          # the runners of the model's shards


def steps_until(machine, threads):
    """Steps until the policy runs `threads`, and the most it may take: until the steps have
    paid for the checks so far (BUDGET), then to the next look (a window or the periodic
    interval), then through a check."""
    policy, step_seconds = machine.policy, machine.seconds_for[machine.policy.threads]
    paid_after = max(0.0, policy.check_seconds / policy.BUDGET - policy.total_seconds) / step_seconds
    bound = paid_after + max(policy.WINDOW, policy._interval - policy._since_check) + check_length(policy)
    steps = 0
    while policy.threads != threads and steps <= 10 * bound:
        machine.steps(1)
        steps += 1
    return steps, bound


def test_a_slowdown_changes_the_count_within_a_bounded_number_of_steps():
    machine = Machine({1: 0.010, 2: 0.006})               # idle: 2 threads win
    policy = policy_on(machine)
    machine.steps(check_length(policy) + 100)
    assert policy.threads == 2
    machine.seconds_for = {1: 0.011, 2: 0.033}            # then another program starts
    steps, bound = steps_until(machine, 1)
    assert steps <= bound and policy.checks == {"start": 1, "slowdown": 1}
    machine.steps(150)                                    # one thread is fast again: no new check
    assert policy.checks == {"start": 1, "slowdown": 1}
    machine.seconds_for = {1: 0.010, 2: 0.006}            # the other program ends: a periodic
    steps, bound = steps_until(machine, 2)                # check finds 2 threads again
    assert steps <= bound and policy.checks == {"start": 1, "slowdown": 1, "periodic": 1}


def test_a_count_that_won_a_fooled_check_is_dropped_when_it_runs_slower():
    """Two shards looked faster in the check (a busy program gave them its time for a moment),
    then ran slower than one thread had: the next window brings a new check."""
    machine = Machine({1: 0.010, 2: 0.005})
    policy = policy_on(machine)
    machine.steps(check_length(policy))
    assert policy.threads == 2
    machine.seconds_for = {1: 0.010, 2: 0.013}      # 1.3x one thread's check, 2.6x its own
    steps, bound = steps_until(machine, 1)
    assert steps <= bound and sum(policy.checks.values()) == 2
    machine.steps(2000)                             # and it stays (periodic checks agree)
    assert policy.threads == 1 and machine.threads_seen[-1000:].count(2) < 50


def test_the_checks_cost_is_measured_and_small_on_a_long_run():
    machine = Machine({1: 0.010, 2: 0.020})               # two threads twice as slow
    policy = policy_on(machine)
    machine.steps(12000)
    # Checks at 0, 224, 648, 1472, 3096, 6320 and 9544 steps: each ran 2 x 6 steps with 2
    # threads, 10 ms each beyond one thread's time.
    assert policy.checks == {"start": 1, "periodic": 6}
    assert policy.check_seconds == pytest.approx(7 * 12 * 0.010)
    assert policy.overhead() == pytest.approx(7 * 12 * 0.010 / (12000 * 0.010 + 7 * 12 * 0.010))
    assert policy.overhead() < 0.01
    record = policy.record_of_choices()
    assert record["steps"] == {"1": 12000 - 7 * 12, "2": 7 * 12} and record["checks"] == policy.checks
    assert json.loads(json.dumps(record)) == record       # compact, and JSON as it is


def test_fixed_or_whole_batch_policies_never_check_and_restore_after():
    before = blas_threads()
    for kwargs, threads in [({"threads": 2}, 2), ({"split_batches": False}, 1)]:
        machine = Machine({1: 1.0, 2: 0.001})
        policy = policy_on(machine, **kwargs)
        machine.steps(5000)
        assert set(machine.threads_seen) == {threads} and policy.checks == {}
        policy.finish()
        assert blas_threads() == before and policy._runners.threads == 5


def test_a_noisy_machine_cannot_make_the_checks_take_over():
    """Every other window of steps 3x slower: the checks stay within their budget of the
    steps' time."""
    machine = Machine({1: 0.010, 2: 0.030})
    policy = policy_on(machine)
    for window in range(300):
        slow = 3 if window % 2 else 1
        machine.seconds_for = {1: 0.010 * slow, 2: 0.030 * slow}
        machine.steps(policy.WINDOW)
    assert sum(policy.checks.values()) > 3 and policy.threads == 1
    assert policy.overhead() < policy.BUDGET + 0.01


def test_a_short_run_is_not_checked():
    machine = Machine({1: 0.010, 2: 0.005})
    machine.policy = policy = ThreadPolicy(max_threads=2, clock=machine.clock, split_batches=True)
    policy.start(steps=policy.SHORT * check_length(policy) - 1)
    machine.steps(policy.SHORT * check_length(policy) - 1)
    assert set(machine.threads_seen) == {1} and policy.checks == {} and "too short" in policy.describe()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadPolicy(threads=bad)


def test_more_threads_than_cores_are_capped_with_a_warning():
    with pytest.warns(UserWarning, match=r"threads=64, but this process may run on 2 core\(s\): using 2"):
        policy = ThreadPolicy(threads=64, max_threads=2)
    assert policy.fixed == 2


# ---------------------------------------------------------------------------- the same numbers


def trained(model, data, threads, **kwargs):
    from xpnn import Solver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # threads=3 on fewer cores: capped
        solver = Solver(model, data, num_epochs=1, batch_size=100, verbose=False, seed=0,
                        threads=threads, update_rule="adam", optim_config={"learning_rate": 1e-3},
                        **kwargs)
    solver.train()
    return solver


def assert_same_arrays(first, second):
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.parametrize("kind", ["cnn", "batchnorm-dropout"])
def test_training_gives_the_same_weights_on_any_thread_count(kind, monkeypatch):
    """1, 2 and 3 threads, shards in worker processes or on threads, measured or fixed: the
    same weights bit for bit, and the same predictions."""
    from xpnn.parallel import workers
    from xpnn.data import get_data
    from xpnn.models import FullyConnectedNet, mnist_cnn
    data = get_data("digits", num_training=600)

    def model():
        if kind == "cnn":
            return mnist_cnn(input_shape=(1, 8, 8), seed=0, reg=1e-3)
        return FullyConnectedNet([32, 16], input_dim=64, normalization="batchnorm",
                                 dropout_keep_ratio=0.8, seed=0)
    monkeypatch.setattr(shards, "SHARD_WORK", 1)   # batches of 100 in four shards: work for 3 threads
    runs = {f"{n} threads": trained(model(), data, n).model for n in (1, 2)}
    monkeypatch.setattr("xpnn.parallel.threads.available_cores", lambda: 3)     # as on a 3-core machine
    with monkeypatch.context() as patched:     # measured, the count changing every few steps
        for setting, value in {"SHORT": 0, "WARMUP": 0, "TRIAL": 1, "ROUNDS": 1, "RECHECK": 1,
                               "BUDGET": 1e9}.items():
            patched.setattr(ThreadPolicy, setting, value)
        measured = trained(model(), data, None)
    if kind == "cnn":                  # batches of 100: 4 shards, so 1 to 3 threads were timed
        assert set(measured.thread_policy.record_of_choices()["steps"]) == {"1", "2", "3"}
    runs["measured"] = measured.model
    runs["3 threads"] = trained(model(), data, 3).model
    monkeypatch.setattr(workers, "_can_fork", lambda model, X: False)
    runs["2 threads, no processes"] = trained(model(), data, 2).model
    X = data["X_val"][:250]
    first = runs.pop("1 threads")
    for how, other in runs.items():
        assert_same_arrays(first.params, other.params)
        assert_same_arrays(first.buffers(), other.buffers())
        np.testing.assert_array_equal(other.predict_proba(X), first.predict_proba(X), err_msg=how)
        for threads in (1, 3):                   # test-mode scores in shards, as the Solver's
            np.testing.assert_array_equal(Sharded(other, threads).loss(X), Sharded(first, 1).loss(X),
                                          err_msg=how)


def test_a_thread_count_is_one_models_own():
    """A Solver's policy sets the threads of its own wrapped model, only while training: two
    models never share a setting (there is no process-wide one)."""
    from xpnn import Solver
    from xpnn.data import get_data
    from xpnn.models import mnist_cnn
    from xpnn.backends.blas import default_threads
    data = get_data("digits", num_training=100)
    first, second = (Solver(mnist_cnn(input_shape=(1, 8, 8), seed=0), data, threads=threads,
                            verbose=False) for threads in (2, 1))
    assert first.net.model is first.model and first.net.threads == second.net.threads == default_threads()
    first.thread_policy.start()
    assert first.net.threads == 2 and second.net.threads == default_threads()
    first.thread_policy.finish()
    assert first.net.threads == default_threads()


def test_a_batch_is_cut_by_the_problem_alone():
    """Two shards of 25+ samples; more (to 4) only where each keeps 50M multiply-adds: the
    MNIST CNN (182k a sample) gets two up to 800 images, the CIFAR net (5.6M) four from 100."""
    from xpnn.models import ThreeLayerConvNet, mnist_cnn
    light, heavy = mnist_cnn(seed=0), ThreeLayerConvNet(seed=0)
    assert light.multiply_adds == 8 * 9 * 28 * 28 + 8 * 72 * 14 * 14 + 392 * 32 + 32 * 10
    assert heavy.multiply_adds == 32 * 3 * 49 * 32 * 32 + 8192 * 100 + 100 * 10
    for threads in (1, 2, 7):
        for model, expected in [(light, {10: [10], 50: [25] * 2, 100: [50] * 2, 1000: [333, 333, 334]}),
                                (heavy, {10: [10], 50: [25] * 2, 100: [25] * 4, 128: [32] * 4})]:
            cuts = {N: [s.stop - s.start for s in Sharded(model, threads).shards(N, True)] for N in expected}
            assert cuts == expected


def test_a_step_split_over_runners_matches_the_whole_batch(monkeypatch):
    """The shards' sums differ from the whole batch's only in rounding; whoever runs them,
    they are the same bit for bit (4 shards on 1, 2, 3 and 4 runners)."""
    from xpnn.models import mnist_cnn
    model = mnist_cnn(input_shape=(1, 8, 8), dtype="float64", seed=0, reg=0.1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((100, 1, 8, 8)), rng.integers(0, 10, 100)
    whole_loss, whole_grads = model.loss(X, y)     # the model alone: the whole batch
    monkeypatch.setattr(shards, "SHARD_WORK", 1)   # four shards of this small model's batch
    results = {}
    for runners in (1, 2, 3, 4):
        net = Sharded(model, runners)
        results[runners] = net.loss(X, y), net.loss(X)
    (loss, grads), scores = results.pop(1)
    assert loss == pytest.approx(whole_loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], whole_grads[name], rtol=1e-10, atol=1e-13)
    for (other_loss, other_grads), other_scores in results.values():
        assert other_loss == loss
        assert_same_arrays(grads, other_grads)
        np.testing.assert_array_equal(other_scores, scores)


def test_batchnorm_and_dropout_models_keep_their_training_batch_whole():
    from xpnn.models import FullyConnectedNet
    X, y = np.random.default_rng(0).standard_normal((50, 64)), np.arange(50) % 10
    for model in [FullyConnectedNet([16], input_dim=64, normalization="batchnorm", seed=0),
                  FullyConnectedNet([16], input_dim=64, dropout_keep_ratio=0.5, seed=0)]:
        assert model.mixes_samples
        net = Sharded(model, 2)
        sizes = {"train": [], "test": []}
        cut = net.shards
        net.shards = lambda N, train: sizes["train" if train else "test"].extend(
            s.stop - s.start for s in cut(N, train)) or cut(N, train)
        net.loss(X, y)
        net.loss(X)                              # test mode: per sample, so it splits
        assert sizes == {"train": [50], "test": [25, 25]}


def test_label_errors_are_found_in_any_shard():
    from xpnn.models import mnist_cnn
    net = Sharded(mnist_cnn(input_shape=(1, 8, 8), seed=0), threads=3)
    X = np.zeros((100, 1, 8, 8), np.float32)
    y = np.arange(100) % 10
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\].*from 0 to 10"):
        net.loss(X, np.where(np.arange(100) == 99, 10, y))        # only the last shard is wrong
    with pytest.raises(ValueError, match=r"labels y must have shape \(100,\)"):
        net.loss(X, np.zeros(120, dtype=int))                     # not cut to fit the shards


def test_worker_threads_keep_numpys_error_settings():
    from xpnn.parallel.threads import map_in_threads
    with np.errstate(over="ignore", divide="raise"):
        seen = map_in_threads(lambda _: np.geterr(), [0, 1, 2])
    assert [(s["over"], s["divide"]) for s in seen] == [("ignore", "raise")] * 3


def test_cli_records_and_prints_the_thread_choice(tmp_path, capsys):
    from xpnn.cli import main
    out = tmp_path / "run"
    assert main(["train", "--model", "fc", "--hidden", "16", "--dataset", "digits", "--epochs", "1",
                 "--quiet", "--threads", "1", "--out", str(out)]) == 0
    assert "threads: 1 (batch shards; fixed with --threads)" in capsys.readouterr().out
    session = json.loads((out / "metrics.json").read_text())["sessions"][0]
    record = session["threads"]
    assert {k: record[k] for k in ("policy", "threads", "kind", "checks")} == {
        "policy": "fixed", "threads": 1, "kind": "batch shards", "checks": {}}
    assert sum(record["steps"].values()) == record["steps"]["1"] > 0


def test_cli_caps_more_threads_than_cores_and_gives_the_same_model(tmp_path, capsys):
    from xpnn.io import load_npz
    from xpnn.cli import main
    runs = {}
    for threads in ("1", str(available_cores() + 5)):
        out = tmp_path / threads
        assert main(["train", "--model", "mnist-cnn", "--dataset", "digits", "--epochs", "1",
                     "--num-train", "400", "--quiet", "--threads", threads, "--out", str(out)]) == 0
        runs[threads] = load_npz(out / "model.npz")[0]
    assert f"this process may run on {available_cores()} core(s)" in capsys.readouterr().err
    assert_same_arrays(*runs.values())


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_cli_refuses_bad_thread_counts_naming_the_option(bad, capsys):
    from xpnn.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--threads", bad])
    assert "--threads" in capsys.readouterr().err

