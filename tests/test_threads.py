"""The BLAS thread policy, driven by a clock the test controls (no wall-clock asserts)."""
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


class Machine:
    """A fake clock and a probe whose duration depends on the policy's thread count now."""

    def __init__(self, seconds_for):
        self.now, self.seconds_for, self.policy = 0.0, seconds_for, None
        self.threads_seen = set()

    def clock(self):
        return self.now

    def probe(self):
        assert blas_threads() == self.policy.threads          # the limit is really applied
        self.threads_seen.add(self.policy.threads)
        self.now += self.seconds_for[self.policy.threads]

    def step(self, seconds_for=None):
        self.policy.timed(lambda: setattr(self, "now", self.now + (seconds_for or self.seconds_for)[self.policy.threads]))
        if self.policy.slowed:
            self.policy.recheck(self.probe, "slowdown")


def policy_on(machine, **kwargs):
    machine.policy = ThreadPolicy(max_threads=2, clock=machine.clock, **kwargs)
    return machine.policy


def test_one_thread_when_more_collapse():
    machine = Machine({1: 0.010, 2: 0.300})              # a busy core: 2 threads 30x slower
    policy = policy_on(machine)
    policy.start(machine.probe)
    policy.finish()
    assert machine.threads_seen == {1, 2} and policy.threads == 1 and policy.history == [("start", 1)]


def test_more_threads_only_when_clearly_faster_and_no_flip_flop():
    for two_threads, expected in [(0.009, 1), (0.006, 2)]:
        machine = Machine({1: 0.010, 2: two_threads})
        policy = policy_on(machine)
        policy.start(machine.probe)
        assert policy.threads == expected
        for _ in range(3):                                  # epochs on a steady machine
            policy.recheck(machine.probe, "epoch")
        policy.finish()
        assert [n for _, n in policy.history] == [expected] * 4
        assert policy.probe_ms[0] == {1: 10.0, 2: two_threads * 1e3}     # recorded, in ms


def test_a_slowdown_triggers_a_new_choice():
    machine = Machine({1: 0.010, 2: 0.006})               # idle: 2 threads win
    policy = policy_on(machine)
    policy.start(machine.probe)
    for _ in range(5):
        machine.step()
    assert policy.threads == 2 and not policy.slowed
    machine.seconds_for = {1: 0.010, 2: 0.300}            # then another program starts
    machine.step()
    policy.finish()
    assert policy.threads == 1 and policy.history == [("start", 2), ("slowdown", 1)]


def test_fixed_threads_never_probe_and_restore_after():
    before = blas_threads()
    machine = Machine({1: 1.0, 2: 0.001})
    policy = policy_on(machine, threads=1)
    policy.start(machine.probe)
    for _ in range(10):
        machine.step()
        assert policy.threads == 1 and blas_threads() == 1
    policy.finish()
    assert blas_threads() == before and machine.threads_seen == set()
    assert policy.history == [("fixed", 1)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadPolicy(threads=bad)


def test_solver_measures_threads_on_the_cpu_without_changing_the_run():
    """Probing runs forward passes only: a measured run and a run fixed at the count it chose
    end with the same weights (the thread count is the only thing that could differ)."""
    from xpnn import Solver
    from xpnn.data import get_data
    from xpnn.models import FullyConnectedNet
    data = get_data("digits")

    def run(threads=None):
        solver = Solver(FullyConnectedNet([16], input_dim=64, normalization="batchnorm",
                                          dropout_keep_ratio=0.8, seed=0), data, num_epochs=2,
                        batch_size=50, verbose=False, seed=0, threads=threads)
        solver.train()
        return solver

    measured = run()
    whys = [why for why, _ in measured.thread_policy.history]
    # (a busy machine may add a re-check on a sudden slowdown anywhere)
    assert whys[0] == "start" and "epoch" in whys and set(whys) <= {"start", "epoch", "slowdown"}
    if len({n for _, n in measured.thread_policy.history}) == 1:      # one count all along
        fixed = run(measured.thread_policy.threads)
        assert fixed.thread_policy.history == [("fixed", measured.thread_policy.threads)]
        for k in fixed.model.params:
            np.testing.assert_array_equal(fixed.model.params[k], measured.model.params[k])


def test_cli_records_and_prints_the_thread_choice(tmp_path, capsys):
    import json
    from xpnn.cli import main
    out = tmp_path / "run"
    assert main(["train", "--model", "fc", "--hidden", "16", "--dataset", "digits", "--epochs", "1",
                 "--quiet", "--threads", "1", "--out", str(out)]) == 0
    assert "threads: 1 (batch shards; fixed with --threads)" in capsys.readouterr().out
    session = json.loads((out / "metrics.json").read_text())["sessions"][0]
    assert session["threads"] == {"policy": "fixed", "threads": 1, "kind": "batch shards",
                                  "cores": session["threads"]["cores"],
                                  "choices": [{"when": "fixed", "threads": 1}], "probes_ms": []}


def test_a_resumed_run_starts_from_the_checkpoints_thread_count(tmp_path):
    from xpnn import Solver
    from xpnn.data import get_data
    from xpnn.models import FullyConnectedNet
    data = get_data("digits")
    solver = Solver(FullyConnectedNet([16], input_dim=64, seed=0), data, num_epochs=1, batch_size=50,
                    verbose=False, seed=0, checkpoint_name=str(tmp_path / "ck"))
    solver.train()
    solver.thread_policy.threads = 2                   # as if the machine had chosen 2
    solver.save_checkpoint(tmp_path / "two.npz")
    resumed = Solver(FullyConnectedNet([16], input_dim=64, seed=0), data, num_epochs=1, verbose=False)
    resumed.load_checkpoint(tmp_path / "two.npz")
    assert resumed.thread_policy.threads == 2


# ---------------------------------------------------------------------------- batch shards


def counting_shards(model):
    """Record the batch size of every shard the model's training step and test pass run
    (as the model cuts them: the shards run on threads or in worker processes)."""
    sizes = {"train": [], "test": []}
    shards = model._shards

    def counted(N, train):
        cut = shards(N, train)
        sizes["train" if train else "test"].extend(s.stop - s.start for s in cut)
        return cut
    model._shards = counted
    return sizes


def small_models():
    from xpnn.models import FullyConnectedNet, Sequential, mnist_cnn
    from xpnn.nn import Affine, Tanh
    return [mnist_cnn(input_shape=(1, 8, 8), dtype="float64", seed=0, reg=0.1),
            FullyConnectedNet([16, 12], input_dim=64, normalization="layernorm", dtype="float64",
                              seed=0),
            Sequential([Affine(12), Tanh(), Affine(10)], (64,), loss="svm", dtype="float64", seed=0),
            Sequential([Affine(10)], (64,), loss="mse", dtype="float64", seed=0)]


@pytest.mark.parametrize("index", range(4))
def test_a_step_split_over_threads_matches_one_thread(cpu, index):
    model = small_models()[index]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, *model.input_shape))
    y = rng.standard_normal((10, 10)) if model.loss_name == "mse" else rng.integers(0, 10, 10)
    loss, grads = model.loss(X, y)
    scores = model.loss(X)
    cpu.threads = 3
    sizes = counting_shards(model)
    split_loss, split_grads = model.loss(X, y)
    split_scores = model.loss(X)
    assert {k: sorted(v) for k, v in sizes.items()} == {"train": [3, 3, 4], "test": [3, 3, 4]}
    assert split_loss == pytest.approx(loss, rel=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(split_grads[name], grad, rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(split_scores, scores, rtol=1e-12)
    again = model.loss(X, y)                     # the same shards, the same sums: bit for bit
    assert again[0] == split_loss
    for name in grads:
        np.testing.assert_array_equal(again[1][name], split_grads[name])


def test_batchnorm_and_dropout_models_keep_their_training_batch_whole(cpu):
    from xpnn.models import FullyConnectedNet
    X, y = np.random.default_rng(0).standard_normal((10, 64)), np.arange(10)
    for model in [FullyConnectedNet([16], input_dim=64, normalization="batchnorm", seed=0),
                  FullyConnectedNet([16], input_dim=64, dropout_keep_ratio=0.5, seed=0)]:
        assert not model.splits_steps
        cpu.threads = 2
        sizes = counting_shards(model)
        model.loss(X, y)
        model.loss(X)                            # test mode: per sample, so it splits
        assert sizes == {"train": [10], "test": [5, 5]}


def test_label_errors_are_found_in_any_shard(cpu):
    from xpnn.models import mnist_cnn
    model = mnist_cnn(input_shape=(1, 8, 8), seed=0)
    X = np.zeros((9, 1, 8, 8), np.float32)
    cpu.threads = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\].*from 0 to 10"):
        model.loss(X, np.array([0, 1, 2, 3, 4, 5, 6, 7, 10]))      # only the last shard is wrong
    with pytest.raises(ValueError, match=r"labels y must have shape \(9,\)"):
        model.loss(X, np.zeros(12, dtype=int))                     # not cut to fit the shards


def test_worker_threads_keep_numpys_error_settings():
    from xpnn.threads import map_in_threads
    with np.errstate(over="ignore", divide="raise"):
        seen = map_in_threads(lambda _: np.geterr(), [0, 1, 2])
    assert [(s["over"], s["divide"]) for s in seen] == [("ignore", "raise")] * 3


@pytest.mark.parametrize("split", [True, False])
def test_policy_gives_the_cores_to_batch_shards_or_to_blas(split):
    before = blas_threads()

    class Backend:
        threads = 5                              # whatever the user had: put back after
    backend = Backend()
    machine = Machine({1: 0.010, 2: 0.006})

    def probe():
        shards, blas = (machine.policy.threads, 1) if split else (1, machine.policy.threads)
        assert backend.threads == shards and blas_threads() == blas
        machine.now += machine.seconds_for[machine.policy.threads]
    policy = policy_on(machine, backend=backend, split_batches=split)
    policy.start(probe)
    assert policy.threads == 2 and policy.kind == ("batch shards" if split else "BLAS")
    policy.finish()
    assert backend.threads == 5 and blas_threads() == before


def test_a_split_training_run_is_reproducible(cpu):
    from xpnn import Solver
    from xpnn.data import get_data
    from xpnn.models import mnist_cnn
    data = get_data("digits", num_training=300)

    cpu.threads = 3

    def run():
        solver = Solver(mnist_cnn(input_shape=(1, 8, 8), seed=0), data, num_epochs=1, batch_size=50,
                        verbose=False, seed=0, threads=2)
        solver.train()
        assert solver.thread_policy.kind == "batch shards" and cpu.threads == 3   # put back
        return solver.model.params
    first, second = run(), run()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
