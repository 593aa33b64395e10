"""The training toolkit: callbacks, learning-rate schedules, gradient clipping, AdamW,
GroupNorm, augmentation, and their state across checkpoints (issue 25)."""
import csv
import math

import numpy as np
import pytest

from xpnn import callbacks, schedules
from xpnn.augment import Augment, parse
from xpnn.backend import to_numpy
from xpnn.data import get_data
from xpnn.gradient_check import eval_numerical_gradient, rel_error
from xpnn.models import FullyConnectedNet, load, mnist_cnn
from xpnn.nn import Affine, Conv, GroupNorm, ReLU, Sequential
from xpnn.optim import adamw
from xpnn.optim import clip_grad_norm
from xpnn.solver import Solver


@pytest.fixture(scope="module")
def digits():
    return get_data("digits")


def small_solver(data, epochs=3, **kwargs):
    model = FullyConnectedNet([16], input_dim=64, seed=0)
    kwargs.setdefault("optim_config", {"learning_rate": 1e-2})
    return Solver(model, data, update_rule=kwargs.pop("update_rule", "adam"), num_epochs=epochs,
                  batch_size=100, seed=0, verbose=False, num_train_samples=300, **kwargs)


class Recorder:
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_train_begin(self, solver):
        self.calls.append(("begin", solver.epoch))

    def on_step_end(self, solver, iteration, loss):
        self.calls.append(("step", iteration, loss))
        if iteration == self.stop_at:
            solver.stop_training = True

    def on_epoch_end(self, solver, epoch, logs):
        self.calls.append(("epoch", epoch, dict(logs)))

    def on_train_end(self, solver):
        self.calls.append(("end",))


# ---------------------------------------------------------------------------- callbacks

def test_callbacks_are_called_in_order_with_the_documented_logs(digits):
    rec = Recorder()
    solver = small_solver(digits, callbacks=[rec])
    solver.train()
    kinds = [c[0] for c in rec.calls]
    per_epoch = len(digits["X_train"]) // 100
    assert kinds == ["begin"] + (["step"] * per_epoch + ["epoch"]) * 3 + ["end"]
    steps = [c for c in rec.calls if c[0] == "step"]
    assert [c[1] for c in steps] == list(range(1, 3 * per_epoch + 1))
    assert [c[2] for c in steps] == solver.loss_history
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    for k, (_, epoch, logs) in enumerate(epochs):
        assert epoch == k + 1
        assert set(logs) == {"epoch", "loss", "train_acc", "val_acc", "lr", "seconds"}
        losses = solver.loss_history[k * per_epoch:(k + 1) * per_epoch]
        assert logs["loss"] == pytest.approx(sum(losses) / len(losses))
        assert logs["train_acc"] == solver.train_acc_history[k + 1]
        assert logs["val_acc"] == solver.val_acc_history[k + 1]
        assert logs["lr"] == 1e-2 and logs["seconds"] > 0


def test_stop_training_ends_after_the_step(digits):
    rec = Recorder(stop_at=5)
    solver = small_solver(digits, callbacks=[rec])
    solver.train()
    assert solver.t == 5 and solver.epoch == 1 and len(solver.loss_history) == 5
    assert [c[0] for c in rec.calls][-2:] == ["epoch", "end"]     # its epoch still ends


def test_a_callback_without_hooks_is_refused(digits):
    with pytest.raises(TypeError, match="has none of the methods"):
        small_solver(digits, callbacks=[object()])


class FakeSolver:
    """What EarlyStopping touches: the model's params, the backend, stop_training."""
    def __init__(self):
        from xpnn.backend import get_backend
        self.backend = get_backend("cpu")
        self.model = type("M", (), {})()
        self.model.params = {"W1": np.zeros(2)}
        self.stop_training = False


@pytest.mark.parametrize("monitor, values, stop, best", [
    ("val_acc", [0.5, 0.7, 0.69, 0.7], 4, 2),
    ("loss", [3.0, 2.0, 2.5, 1.0, 1.5, 1.2], 6, 4),
    ("val_acc", [0.5, 0.6, 0.7, 0.8], 0, 4),
])
def test_early_stopping_stops_after_patience_and_restores_the_best(monitor, values, stop, best):
    es = callbacks.EarlyStopping(monitor=monitor, patience=2)
    fake = FakeSolver()
    for epoch, value in enumerate(values, start=1):
        fake.model.params = {"W1": np.full(2, float(epoch))}
        es.on_epoch_end(fake, epoch, {"val_acc": 0.0, "train_acc": 0.0, "loss": 0.0, monitor: value})
        assert fake.stop_training == (epoch == stop)
    assert es.stopped_epoch == stop and es.best_epoch == best
    es.on_train_end(fake)
    assert np.all(fake.model.params["W1"] == best)


def test_early_stopping_min_delta_and_no_restore():
    es = callbacks.EarlyStopping(monitor="val_acc", patience=1, min_delta=0.05, restore_best_weights=False)
    fake = FakeSolver()
    es.on_epoch_end(fake, 1, {"val_acc": 0.5})
    es.on_epoch_end(fake, 2, {"val_acc": 0.52})     # not by more than min_delta
    assert fake.stop_training and es.best == 0.5
    fake.model.params = {"W1": np.ones(2)}
    es.on_train_end(fake)
    assert np.all(fake.model.params["W1"] == 1)


def test_early_stopping_in_a_solver_restores_the_best_epoch(digits):
    # A rate that makes Adam diverge after a good first epoch: the loss rises, training stops.
    es = callbacks.EarlyStopping(monitor="val_acc", patience=1)
    rec = Recorder()
    solver = small_solver(digits, epochs=8, callbacks=[es, rec],
                          lr_schedule=lambda e: [1.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0][e])
    solver.train()
    accs = [c[2]["val_acc"] for c in rec.calls if c[0] == "epoch"]
    assert es.stopped_epoch == len(accs) < 8
    assert es.best_epoch == int(np.argmax(accs)) + 1
    assert solver.check_accuracy(digits["X_val"], digits["y_val"]) == pytest.approx(max(accs))


def test_csv_logger_writes_each_epoch(digits, tmp_path):
    path = tmp_path / "metrics.csv"
    sizes = []

    class Peek:
        def on_epoch_end(self, solver, epoch, logs):
            with open(path) as f:
                sizes.append(len(list(csv.DictReader(f))))
    solver = small_solver(digits, callbacks=[callbacks.CSVLogger(path), Peek()])
    solver.train()
    assert sizes == [1, 2, 3]          # written as each epoch ends
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_acc"]) for r in rows] == solver.val_acc_history[1:]
    assert list(rows[0]) == ["epoch", "loss", "train_acc", "val_acc", "lr", "seconds"]


def test_model_checkpoint_every_and_keep(digits, tmp_path):
    cp = callbacks.ModelCheckpoint(tmp_path, every=2, keep=2)
    solver = small_solver(digits, epochs=7, callbacks=[cp])
    solver.train()
    assert [p.name for p in cp.saved] == [f"checkpoint_epoch_{k}.npz" for k in (2, 4, 6, 7)]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["checkpoint_epoch_6.npz",
                                                              "checkpoint_epoch_7.npz"]


def resume_run(data, tmp_path, epochs, stop_after=None, resume_from=None, **extra):
    """A run with every stateful piece: plateau schedule, early stopping, augmentation,
    clipping, CSV log, checkpoints; stopped after `stop_after` epochs or resumed."""
    es = callbacks.EarlyStopping(monitor="loss", patience=50)
    logger = callbacks.CSVLogger(tmp_path / "log.csv")
    cp = callbacks.ModelCheckpoint(tmp_path / "ckpt")

    class Stop:
        def on_epoch_end(self, solver, epoch, logs):
            if epoch == stop_after:
                solver.stop_training = True
    model = mnist_cnn(input_shape=(1, 8, 8), filters=4, hidden_dim=16, seed=0)
    solver = Solver(model, data, update_rule="adamw", optim_config={"learning_rate": 3e-3},
                    num_epochs=epochs, batch_size=150, seed=3, verbose=False, num_train_samples=200,
                    callbacks=[es, logger, Stop(), cp], augment="crop,flip", clip_grad_norm=2.0,
                    lr_schedule=schedules.plateau(patience=1, factor=0.5, monitor="loss"), **extra)
    if resume_from is not None:
        solver.load_checkpoint(resume_from)
    solver.train()
    return solver, es


def test_resume_keeps_callbacks_schedule_and_augmentation_state(digits, tmp_path):
    whole, es_whole = resume_run(digits, tmp_path / "a", 4)
    resume_run(digits, tmp_path / "b", 4, stop_after=2)
    resumed, es_resumed = resume_run(digits, tmp_path / "b", 4,
                                     resume_from=tmp_path / "b" / "ckpt" / "checkpoint_epoch_2.npz")
    assert resumed.loss_history == whole.loss_history          # bit for bit
    for name in whole.model.params:
        assert np.array_equal(whole.model.params[name], resumed.model.params[name])
    assert (es_whole.best, es_whole.best_epoch) == (es_resumed.best, es_resumed.best_epoch)
    assert [c["learning_rate"] for c in whole.optim_configs.values()] == \
        [c["learning_rate"] for c in resumed.optim_configs.values()]
    rows_a = (tmp_path / "a" / "log.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert len(rows_b) == 5 and [r.split(",")[:5] for r in rows_a] == [r.split(",")[:5] for r in rows_b]


def test_a_checkpoint_with_other_callbacks_is_refused(digits, tmp_path):
    from xpnn.io import CheckpointError
    solver = small_solver(digits, epochs=1, callbacks=[callbacks.EarlyStopping()])
    solver.train()
    path = solver.save_checkpoint(tmp_path / "c.npz")
    other = small_solver(digits, epochs=2, callbacks=[callbacks.CSVLogger(tmp_path / "x.csv")])
    with pytest.raises(CheckpointError, match="EarlyStopping"):
        other.load_checkpoint(path)


# ---------------------------------------------------------------------------- schedules

def test_schedule_multipliers():
    assert [schedules.exponential(0.5)(e) for e in range(4)] == [1, 0.5, 0.25, 0.125]
    assert [schedules.step(2, 0.1)(e) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cos = schedules.cosine(5)
    assert [cos(e) for e in range(5)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])
    warm = schedules.cosine(6, warmup=2)
    assert [warm(e) for e in range(6)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)])
    plateau = schedules.plateau(patience=2, factor=0.1)
    seen = []
    for e, acc in enumerate([0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.6, 0.6]):
        seen.append(plateau(e))
        plateau.observe(e, {"val_acc": acc})
    assert seen == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("bad", [lambda: schedules.cosine(3, warmup=3), lambda: schedules.step(0),
                                 lambda: schedules.exponential(-1), lambda: schedules.plateau(factor=2)])
def test_schedules_refuse_bad_arguments(bad):
    with pytest.raises(ValueError):
        bad()


def test_parse_schedule_text():
    assert isinstance(schedules.parse("exp", 5, decay=0.9), schedules.Exponential)
    s = schedules.parse("step:2:0.5", 5)
    assert (s.every, s.gamma) == (2, 0.5)
    assert schedules.parse("cosine", 5, warmup=1).warmup == 1
    assert schedules.parse("plateau:3:0.2", 5).patience == 3
    for bad in ("step:2", "linear", "step:a:b", "plateau:1.5"):
        with pytest.raises(ValueError, match="--lr-schedule"):
            schedules.parse(bad, 5)
    with pytest.raises(ValueError, match="--warmup"):
        schedules.parse("exp", 5, warmup=2, decay=0.9)


def test_solver_applies_the_schedule_per_epoch(digits):
    rec = Recorder()
    solver = small_solver(digits, epochs=4, callbacks=[rec], lr_schedule=schedules.step(2, 0.1))
    solver.train()
    rates = [c[2]["lr"] for c in rec.calls if c[0] == "epoch"]
    assert rates == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])


def test_lr_decay_is_the_exponential_schedule(digits):
    a, b = Recorder(), Recorder()
    small_solver(digits, epochs=3, callbacks=[a], lr_decay=0.5).train()
    small_solver(digits, epochs=3, callbacks=[b], lr_schedule=schedules.exponential(0.5)).train()
    rates = [[c[2]["lr"] for c in r.calls if c[0] == "epoch"] for r in (a, b)]
    assert rates[0] == pytest.approx([1e-2, 5e-3, 2.5e-3]) and rates[1] == pytest.approx(rates[0])
    with pytest.raises(ValueError, match="not both"):
        small_solver(digits, lr_decay=0.5, lr_schedule=schedules.exponential(0.5))


def test_schedule_without_a_learning_rate_scales_the_rules_default(digits):
    rec = Recorder()
    small_solver(digits, epochs=2, optim_config={}, callbacks=[rec],
                 lr_schedule=schedules.exponential(0.1)).train()
    assert [c[2]["lr"] for c in rec.calls if c[0] == "epoch"] == pytest.approx([1e-3, 1e-4])


# ---------------------------------------------------------------------------- clipping, AdamW

def test_clipping_scales_to_the_global_norm():
    rng = np.random.default_rng(0)
    grads = {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(4)}
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    clipped = clip_grad_norm(grads, norm / 4)
    new_norm = math.sqrt(sum(float(np.sum(g * g)) for g in clipped.values()))
    assert new_norm == pytest.approx(norm / 4, rel=1e-5)
    for k in grads:
        assert np.allclose(clipped[k], grads[k] * (norm / 4) / (norm + 1e-6))
    unchanged = clip_grad_norm(grads, norm * 2)
    assert all(np.array_equal(unchanged[k], grads[k]) for k in grads)


def test_solver_clips_before_the_update(digits):
    """With plain SGD, one step moves the weights by lr * the clipped gradient."""
    model = FullyConnectedNet([8], input_dim=64, seed=1, dtype="float64")
    before = {k: v.copy() for k, v in model.params.items()}
    X, y = digits["X_train"][:50].astype(np.float64), digits["y_train"][:50]
    _, grads = model.loss(X, y)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    data = dict(digits, X_train=X, y_train=y)
    solver = Solver(model, data, update_rule="sgd", optim_config={"learning_rate": 1.0},
                    num_epochs=1, batch_size=50, verbose=False, seed=0, clip_grad_norm=norm / 10)
    solver.train()
    moved = math.sqrt(sum(float(np.sum((before[k] - model.params[k]) ** 2)) for k in before))
    assert moved == pytest.approx(norm / 10 * norm / (norm + 1e-6), rel=1e-9)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        Solver(model, data, clip_grad_norm=0, verbose=False)


def adamw_reference(w, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 2 of Loshchilov & Hutter with PyTorch's scaling (the decay times lr)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        w = w - lr * wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return w


def test_adamw_matches_the_decoupled_formula(xp):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 5))
    grads = [rng.standard_normal((4, 5)) for _ in range(5)]
    w, config = xp.asarray(w0), {"learning_rate": 1e-2, "weight_decay": 0.1}
    for g in grads:
        w, config = adamw(w, xp.asarray(g), config)
    assert rel_error(to_numpy(w), adamw_reference(w0, grads, 1e-2, 0.1)) < 1e-12
    assert config["t"] == 5
    # Decoupled: a zero gradient still shrinks the weights, by (1 - lr * wd) per step.
    w, config = adamw(xp.asarray(w0), xp.asarray(np.zeros((4, 5))), {"weight_decay": 0.5})
    assert np.allclose(to_numpy(w), w0 * (1 - 1e-3 * 0.5))


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((3, 7))
    grads = [rng.standard_normal((3, 7)) for _ in range(6)]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW([p], lr=3e-3, weight_decay=0.2, betas=(0.9, 0.999), eps=1e-8)
    w, config = w0, {"learning_rate": 3e-3, "weight_decay": 0.2}
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        w, config = adamw(w, g, config)
    assert rel_error(w, p.detach().numpy()) < 1e-10


def test_adamw_in_the_solver_accepts_weight_decay(digits):
    solver = small_solver(digits, epochs=3, update_rule="adamw",
                          optim_config={"learning_rate": 1e-2, "weight_decay": 1e-3})
    solver.train()
    assert solver.val_acc_history[-1] > 0.7


# ---------------------------------------------------------------------------- GroupNorm

def groupnorm_model(groups, dtype="float64"):
    return Sequential([Conv(4, 3, pad=1), GroupNorm(groups), ReLU(), Affine(8), GroupNorm(2),
                       ReLU(), Affine(3)], (2, 5, 5), dtype=dtype, seed=0, init="he")


def test_groupnorm_gradients_numerically():
    model = groupnorm_model(2)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4, 2, 5, 5)), rng.integers(0, 3, 4)
    model.params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in model.params.items()}
    _, grads = model.loss(X, y)
    for name in ("gamma1", "beta1", "W1", "gamma2", "W3"):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False, h=1e-6)
        assert rel_error(num, grads[name]) < 1e-6, name


def test_groupnorm_normalizes_each_group_and_saves(tmp_path):
    model = groupnorm_model(None)
    layer = model.layers[1]
    assert layer.num_groups == 4 and model.layers[4].num_groups == 2
    fc = FullyConnectedNet([32, 200], input_dim=4, normalization="groupnorm")
    assert [l.num_groups for l in fc.layers if isinstance(l, GroupNorm)] == [2, 10]   # >= 16 values
    X = np.random.default_rng(0).standard_normal((3, 2, 5, 5))
    out, _ = layer.forward(model.layers[0].forward(X, model.params, False)[0], model.params, False)
    groups = out.reshape(3, 4, -1)
    assert np.allclose(groups.mean(axis=2), 0, atol=1e-10) and np.allclose(groups.var(axis=2), 1, atol=1e-3)
    model.save(tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    assert np.array_equal(back.loss(X), model.loss(X))
    with pytest.raises(ValueError, match="do not divide"):
        groupnorm_model(3)
    assert GroupNorm(num_groups=4).groups == 4 and GroupNorm(4).spec() == {"type": "GroupNorm",
                                                                            "groups": 4, "eps": 1e-5}


def test_groupnorm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 3, 3))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    layer = GroupNorm(3)
    layer.build((6, 3, 3), 1)
    out, _ = layer.forward(x, {"gamma1": gamma, "beta1": beta}, True)
    expected = torch.nn.functional.group_norm(torch.tensor(x), 3, torch.tensor(gamma),
                                              torch.tensor(beta), eps=1e-5).numpy()
    assert rel_error(out, expected) < 1e-10


def test_fully_connected_net_with_groupnorm_trains(digits):
    model = FullyConnectedNet([32], input_dim=64, normalization="groupnorm", seed=0)
    assert not model.mixes_samples      # no statistic crosses samples
    solver = Solver(model, digits, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    num_epochs=2, batch_size=100, verbose=False, seed=0)
    solver.train()
    assert solver.best_val_acc > 0.7


# ---------------------------------------------------------------------------- augmentation

def reference_augment(X, dy, dx, flip, pad):
    """Pad with zeros, cut at the offsets, flip: the textbook way, with NumPy."""
    N, C, H, W = X.shape
    padded = np.pad(X, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.stack([padded[n, :, pad + dy[n]:pad + dy[n] + H, pad + dx[n]:pad + dx[n] + W]
                    for n in range(N)])
    return np.where(flip[:, None, None, None], out[..., ::-1], out)


def test_augmentation_is_pad_crop_flip(xp):
    from xpnn.backend import get_backend
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 2, 5, 7)).astype(np.float32)
    aug = Augment(crop=2, flip=True)
    drawn = aug.draw(np.random.default_rng(1), 6)
    backend = get_backend({"numpy": "cpu"}.get(xp.__name__.split(".")[-1], xp.__name__.split(".")[0])
                          if "strict" in xp.__name__ else "cpu")
    out = aug.apply(backend.to_device(X), drawn, backend)
    assert np.array_equal(np.asarray(out), reference_augment(X, *drawn, 2))
    assert len(set(drawn[0])) > 1 and drawn[2].any() and not drawn[2].all()


def test_augmentation_draws_are_seeded_and_parse():
    a = Augment(crop=3, flip=True).draw(np.random.default_rng(5), 10)
    b = Augment(crop=3, flip=True).draw(np.random.default_rng(5), 10)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert abs(a[0]).max() <= 3
    assert parse("crop,flip", (1, 28, 28)).crop == 3 and parse("crop:4", (3, 32, 32)).crop == 4
    assert parse("flip", (1, 8, 8)).flip and parse("crop", (1, 8, 8)).crop == 1
    for bad in ("rotate", "crop:x", "flip:2"):
        with pytest.raises(ValueError, match="unknown augmentation"):
            parse(bad, (1, 8, 8))


def test_solver_augmentation_changes_training_but_not_the_batch_order(digits):
    plain = small_solver(digits, epochs=1)
    plain.train()
    augmented = small_solver(digits, epochs=1, augment="crop,flip")
    augmented.train()
    assert plain.loss_history != augmented.loss_history
    assert plain.rng.bit_generator.state == augmented.rng.bit_generator.state
    again = small_solver(digits, epochs=1, augment=Augment(crop=1, flip=True))
    again.train()
    assert again.loss_history == augmented.loss_history      # "crop" on 8x8 images is crop:1
    with pytest.raises(ValueError, match="images"):
        Solver(FullyConnectedNet([8], input_dim=64), dict(digits, X_train=digits["X_train"].reshape(-1, 64),
               X_val=digits["X_val"].reshape(-1, 64)), augment="flip", verbose=False)
