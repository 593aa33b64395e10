"""A command line that guides: help, refused options, resume and extend, interruptions,
sweeps that keep what they finished, NaN runs that still report, files a user can read."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xpnn.cli import evaluate, main, make_parser, report, sweep, train
from xpnn.data import get_data
from xpnn.io import load_npz
from xpnn.models import load
from xpnn.solver import Solver

# One fixed thread: runs compared bit for bit must not let the thread policy choose (the
# count it measures can differ between two runs, and it decides the last bits; the
# policy itself is tested in test_threads.py).
QUICK = ["--dataset", "digits", "--quiet", "--seed", "0", "--threads", "1"]
FC = ["--model", "fc", "--hidden", "32"]


def xpnn(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "xpnn.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def interrupted_after(steps):
    """A Solver whose training is interrupted (as by Ctrl-C) after `steps` steps."""
    class Interrupted(Solver):
        def _step(self, idx):
            if self.t == steps:
                raise KeyboardInterrupt
            super()._step(idx)
    return Interrupted


# ---------------------------------------------------------------------------- help

def test_bare_xpnn_prints_help_and_trains_nothing(tmp_path):
    start = time.perf_counter()
    result = xpnn(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: xpnn") and "examples:" in result.stdout
    assert "xpnn train --help" in result.stdout
    assert list(tmp_path.iterdir()) == []                  # no run started
    assert time.perf_counter() - start < 30


def test_every_option_has_help_and_every_command_examples():
    parser, commands = make_parser()
    for name, p in [("xpnn", parser), *commands.items()]:
        undocumented = [a.option_strings for a in p.arguments if a.option_strings and not a.help]
        assert not undocumented, f"{name}: options without help: {undocumented}"
        text = p.format_help()
        examples = text[text.index("examples:"):].splitlines()
        command = "xpnn" if name == "xpnn" else f"xpnn {name}"
        # RawDescriptionHelpFormatter keeps one example per line, as written.
        assert sum(line.startswith(f"  {command} ") for line in examples) >= 2, text


# ---------------------------------------------------------------------------- refused options

@pytest.mark.parametrize("args,message", [
    (["train", "--model", "softmax", "--hidden", "64"], "--hidden does not apply to --model softmax"),
    (["train", "--model", "mnist-cnn", "--hidden", "64"], "--hidden does not apply to --model mnist-cnn"),
    (["train", "--model", "twolayer", "--hidden", "64,32"], "--model twolayer has one hidden layer"),
    (["train", "--model", "threelayer-cnn", "--hidden", "64,32"], "one hidden layer"),
    (["train", "--data-dir", "/tmp"], "--data-dir does not apply to --dataset digits"),
    (["train", "--model", "mnist-cnn", "--normalization", "batchnorm"],
     "--normalization applies only to --model fc"),
    (["train", "--model", "twolayer", "--dropout", "0.5"], "--dropout applies only to --model fc"),
    (["sweep", "--model", "softmax", "--hidden", "16,32"], "--hidden does not apply to --model softmax"),
])
def test_options_that_do_not_apply_are_refused(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*args, *QUICK]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                  # refused before anything is written


@pytest.mark.parametrize("value", ["0", "1.5", "x"])
def test_dropout_is_a_keep_probability(value, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "fc", "--dropout", value, *QUICK])
    assert "--dropout" in capsys.readouterr().err


def test_normalization_and_dropout_reach_the_model(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *FC, "--normalization", "layernorm", "--dropout", "0.8", "--epochs", "1",
                 "--out", str(out), *QUICK]) == 0
    _, meta = load_npz(out / "model.npz")
    assert meta["config"]["normalization"] == "layernorm"
    assert meta["config"]["dropout_keep_ratio"] == 0.8
    assert {"gamma1", "beta1"} <= set(load(out / "model.npz").params)


# ---------------------------------------------------------------------------- resume

def test_run_interrupted_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch, capsys):
    args = ["train", *FC, "--epochs", "2", *QUICK]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    monkeypatch.setattr(train, "Solver", interrupted_after(steps=5))     # in epoch 1 of 2
    assert main([*args, "--out", str(out)]) == 130
    assert f"interrupted; continue with: xpnn train --resume {out}\n" in capsys.readouterr().err
    assert not list(out.glob("checkpoint_*"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0
    assert "starting it again from the beginning" in capsys.readouterr().out
    ref, run = load_npz(tmp_path / "ref" / "model.npz")[0], load_npz(out / "model.npz")[0]
    for key in ref:
        np.testing.assert_array_equal(run[key], ref[key], err_msg=key)


def test_stop_signals_interrupt_where_they_have_their_default_action():
    """SIGTERM and SIGHUP raise KeyboardInterrupt inside a command, once; a signal the process
    ignores (SIGHUP under `nohup`) stays ignored; the handlers are restored after."""
    from xpnn.cli import signals_interrupt
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)              # as under nohup
    try:
        with signals_interrupt() as received:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)                          # the handler runs before this ends
            os.kill(os.getpid(), signal.SIGTERM)       # a second one, while stopping: no effect
            time.sleep(0.05)
        assert received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_an_interrupt_names_the_command_that_resumes(tmp_path, stop):
    """Ctrl-C, and `kill` (SIGTERM, as a scheduler's time limit sends; SIGHUP, a closed
    terminal, takes the same path): checkpoints kept, the command that continues printed."""
    out = tmp_path / "run"
    # Far more epochs than it will train: the interrupt must land mid-run however fast (or
    # slowed by other programs) the machine is; a lost interrupt times out below.
    args = ["train", "--model", "mnist-cnn", "--epochs", "2000", "--batch-size", "10", "--num-train",
            "400", "--out", str(out), *QUICK]
    # Ctrl-C's default action, as in a terminal: a shell starts a background job (pytest run
    # with `&`, say) with SIGINT ignored, and its children would inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "xpnn.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "run.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(getattr(signal, stop))
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + getattr(signal, stop), err          # 130 for Ctrl-C
    how = "" if stop == "SIGINT" else f" by {stop}"
    assert err.strip().endswith(f"xpnn train: interrupted{how}; continue with: xpnn train --resume {out}")
    assert "Traceback" not in err
    done = len(list(out.glob("checkpoint_epoch_*.npz")))
    resumed = xpnn("train", "--resume", str(out), "--epochs", str(done + 1))   # the command, shortened
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs"] == done + 1


def test_resume_extends_a_run_and_keeps_a_finished_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FC, "--epochs", "2", "--out", str(out), *QUICK]) == 0
    before = {name: (out / name).read_bytes() for name in ("metrics.json", "model.npz", "curves.png")}
    capsys.readouterr()

    assert main(["train", "--resume", str(out)]) == 0            # finished: nothing to do
    said = capsys.readouterr().out
    assert "has finished its 2 epochs" in said and f"xpnn train --resume {out} --epochs N" in said
    assert {name: (out / name).read_bytes() for name in before} == before

    assert main(["train", "--resume", str(out), "--epochs", "1"]) == 2     # fewer: refused
    said = capsys.readouterr()
    assert (f"--epochs 1: {out} has already trained 2 epochs; to train it for longer: "
            f"xpnn train --resume {out} --epochs N (N > 2)") in said.err
    assert said.out == ""              # said first, before the model's summary or any work

    assert main(["train", "--resume", str(out), "--epochs", "4", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    first = json.loads(before["metrics.json"])
    assert metrics["epochs"] == 4 and len(metrics["val_acc_history"]) == 5
    assert metrics["val_acc_history"][:3] == first["val_acc_history"]         # appended
    assert [s["epochs"] for s in metrics["sessions"]] == [[1, 2], [3, 4]]
    assert metrics["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in metrics["sessions"]))

    # Extending keeps the run's learning-rate schedule: the same as one 4-epoch run with it.
    decay = json.loads((out / "run.json").read_text())["lr_decay"]
    assert decay == pytest.approx(0.03 ** (1 / 2))
    ref = tmp_path / "ref"
    assert main(["train", *FC, "--epochs", "4", "--lr-decay", repr(decay), "--out", str(ref), *QUICK]) == 0
    assert json.loads((ref / "metrics.json").read_text())["val_acc_history"] == metrics["val_acc_history"]
    ref_arrays, run_arrays = load_npz(ref / "model.npz")[0], load_npz(out / "model.npz")[0]
    for key in ref_arrays:
        np.testing.assert_array_equal(run_arrays[key], ref_arrays[key], err_msg=key)


def test_an_interrupted_extension_continues_with_the_same_command(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", *FC, "--epochs", "1", "--out", str(out), *QUICK]) == 0
    monkeypatch.setattr(train, "Solver", interrupted_after(steps=30))     # in epoch 2 of 3
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 130
    assert capsys.readouterr().err.endswith(f"continue with: xpnn train --resume {out}\n")
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0                    # no --epochs needed
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
    assert (out / "checkpoint_epoch_3.npz").is_file()


def test_resume_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FC, "--epochs", "1", "--out", str(out), *QUICK]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.1", "--model", "twolayer"]) == 2
    err = capsys.readouterr().err
    assert "--lr (the run's: 0.005, given: 0.1)" in err and "--model (the run's: fc, given: twolayer)" in err
    assert "Only --epochs" in err
    # The run's own values, and the options that may change, are accepted.
    assert main(["train", "--resume", str(out), "--lr", "0.005", "--device", "cpu", "--quiet",
                 "--on-nonfinite", "continue"]) == 0
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("content", ["[]", "{", "\"fc\"", "\xff"])
def test_corrupt_run_json_is_named(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_bytes(content.encode("latin-1"))
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'run.json'} is corrupt" in err and "Traceback" not in err


def test_interrupted_eval_does_not_suggest_resume(monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "load_npz", interrupt)
    monkeypatch.setattr(evaluate, "get_data", interrupt)
    assert main(["eval", "--checkpoint", "model.npz", "--dataset", "digits"]) == 130
    assert capsys.readouterr().err == "\nxpnn eval: interrupted\n"


# ---------------------------------------------------------------------------- sweep

def test_interrupted_sweep_keeps_its_finished_settings(tmp_path, monkeypatch, capsys):
    trained = []

    class ThirdSettingInterrupted(Solver):
        def train(self):
            trained.append(self)
            if len(trained) == 3:
                raise KeyboardInterrupt
            super().train()
    monkeypatch.setattr(sweep, "Solver", ThirdSettingInterrupted)
    out = tmp_path / "sweep"
    assert main(["sweep", *FC[:2], "--epochs", "1", "--lr", "1e-3,1e-2", "--reg", "0,1e-4", "--hidden", "16",
                 "--out", str(out), *QUICK]) == 130
    err = capsys.readouterr().err
    assert "the 2 finished settings are in" in err and "--resume" not in err
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["rows"]) == 2 and result["settings"] == 4
    assert (result["model"], result["dataset"], result["epochs"]) == ("fc", "digits", 1)
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "sweep.txt").read_text().splitlines()) == 2 + 2


def test_sweep_header_eta_and_best_model(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *FC[:2], "--epochs", "1", "--lr", "1e-3,1e-2", "--reg", "0", "--hidden", "16,32",
                 "--out", str(out), *QUICK]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sweep: 4 settings of fc on digits") and "ETA" in lines[1]
    assert [line.split()[0] for line in lines[2:6]] == ["1/4", "2/4", "3/4", "4/4"]
    result = json.loads((out / "sweep.json").read_text())
    best = result["best"]
    assert best == max(result["rows"], key=lambda r: r["val_acc"])
    # model.npz is the best setting's model: it scores the best validation accuracy.
    model, data = load(out / "model.npz"), get_data("digits")
    assert model.params["W1"].shape[1] == best["hidden"]
    predicted = np.argmax(model.loss(data["X_val"]), axis=1)
    assert np.mean(predicted == data["y_val"]) == pytest.approx(best["val_acc"])


def sweep_args(*argv):
    args = make_parser()[0].parse_args(["sweep", *argv])
    return args


@pytest.mark.parametrize("argv", [
    ["--lr", "1e-4,1e-2", "--reg", "1e-5,1e-2", "--random", "20"],          # two ranges
    ["--lr", "1e-3", "--reg", "0,1e-5,1e-2", "--hidden", "16,32", "--random", "5"],  # sets of 6
    ["--lr", "1e-4,1e-2", "--reg", "0,1e-3", "--batch-size", "25,50", "--random", "30"],
])
def test_random_sweeps_never_repeat_a_setting(argv, capsys):
    settings = sweep.sweep_settings(sweep_args(*argv))
    K = int(argv[-1])
    assert len(settings) == K and len(set(settings)) == K
    args = sweep_args(*argv)
    for lr, reg, hidden, batch in settings:
        assert min(args.lr) <= lr <= max(args.lr) and min(args.reg) <= reg <= max(args.reg)
        assert batch in args.batch_size
    assert capsys.readouterr().out == ""
    assert sweep.sweep_settings(sweep_args(*argv)) == settings            # --seed decides them


def test_a_random_sweep_larger_than_its_space_runs_each_setting_once(tmp_path, capsys):
    # The trial's `xpnn sweep --lr 1e-3 --random 5` ran reg = 0.001 three times and 0 twice.
    out = tmp_path / "sweep"
    assert main(["sweep", "--epochs", "1", "--lr", "1e-3", "--random", "5", "--out", str(out),
                 *QUICK]) == 0
    said = capsys.readouterr().out
    assert "--random 5, but the values given make only 2 distinct settings: running each once" in said
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert sorted((r["lr"], r["reg"]) for r in rows) == [(1e-3, 0.0), (1e-3, 1e-3)]


def test_a_grid_sweep_runs_a_value_given_twice_once():
    settings = sweep.sweep_settings(sweep_args("--lr", "1e-3,1e-3,3e-3", "--reg", "0,0"))
    assert settings == [(1e-3, 0.0, 100, 50), (3e-3, 0.0, 100, 50)]


def test_bare_sweep_trains_a_model_made_for_its_data_set():
    # mnist-cnn on 8x8 digits reached 59.7% at best: the sweep's default is a net for them.
    args = sweep_args()
    assert (args.model, args.dataset) == ("fc", "digits")
    assert make_parser()[0].parse_args(["train"]).model == "mnist-cnn"


# ---------------------------------------------------------------------------- NaN

DIVERGES = ["train", *FC, "--update-rule", "sgd", "--lr", "1000", "--epochs", "2", *QUICK]


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")
    metrics = json.loads(path.read_text(), parse_constant=refuse)
    json.dumps(metrics, allow_nan=False)
    return metrics


def test_nan_run_names_the_flag_and_still_reports(tmp_path, capsys, recwarn):
    out = tmp_path / "run"
    assert main([*DIVERGES, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "loss became nan" in err and "--on-nonfinite continue" in err and "on_nonfinite=" not in err
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    metrics = strict_json(out / "metrics.json")
    assert metrics["status"].startswith("stopped: loss became nan") and metrics["test_acc"] is None
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "model.npz").exists()


def test_nan_steps_skipped_are_counted(tmp_path, capsys, recwarn):
    out = tmp_path / "run"
    assert main([*DIVERGES, "--out", str(out), "--on-nonfinite", "continue"]) == 0
    metrics = strict_json(out / "metrics.json")
    checkpoint = load_npz(out / "checkpoint_epoch_2.npz")[1]["solver"]["loss_history"]
    skipped = sum(not math.isfinite(loss) for loss in checkpoint)
    assert skipped > 0 and metrics["skipped_steps"] == skipped
    assert f"skipped {skipped} of {metrics['iterations']} steps" in capsys.readouterr().out
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ---------------------------------------------------------------------------- output

def test_log_output_has_plain_lines_not_a_progress_bar(tmp_path):
    result = xpnn("train", *FC, "--epochs", "2", "--dataset", "digits", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("(Epoch ")]
    assert len(epochs) == 2 and "train acc (on 1,000 images)" in epochs[0]
    assert "lr 5.00e-03" in epochs[0] and epochs[0].endswith(" s")
    assert 5 <= sum(line.startswith("(Iteration ") for line in lines) <= 12


def test_epoch_line_shows_the_mean_loss_of_the_epoch(rng, capsys):
    from xpnn.models import FullyConnectedNet
    X = rng.standard_normal((60, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    data = {"X_train": X[:40], "y_train": y[:40], "X_val": X[40:], "y_val": y[40:]}
    solver = Solver(FullyConnectedNet([8], input_dim=6, num_classes=3, seed=0), data, num_epochs=2,
                    batch_size=10, optim_config={"learning_rate": 0.1}, lr_decay=0.5, seed=0)
    solver.train()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("(Epoch")]
    for k, line in enumerate(lines):
        mean = np.mean(solver.loss_history[4 * k:4 * (k + 1)])
        assert f"mean loss {mean:.5g} " in line, line
        assert f"lr {0.1 * 0.5 ** k:.2e}" in line
    assert "train acc 0." in lines[0]       # all 40 images: no sample to mention


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert main(["train", "--model", "softmax", "--epochs", "1", "--out", str(tmp_path / "run"),
                     *QUICK]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes and set(modes.values()) == {0o640}, modes


def test_accuracy_of_a_diverged_model_warns_nothing(rng, recwarn):
    from xpnn.models import FullyConnectedNet
    X = rng.standard_normal((30, 6)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    model = FullyConnectedNet([8], input_dim=6, num_classes=3, seed=0)
    model.params = {k: v * np.float32(1e30) for k, v in model.params.items()}   # scores overflow
    solver = Solver(model, {"X_train": X, "y_train": y, "X_val": X, "y_val": y}, verbose=False)
    assert 0 <= solver.check_accuracy(X, y) <= 1
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("threads", [1, 2])
def test_metrics_record_the_cpus_and_blas_threads_of_their_times(tmp_path, threads):
    import threadpoolctl
    get_data("digits")     # scikit-learn loads SciPy's own OpenBLAS: let the limit reach it too
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        assert main(["train", "--model", "softmax", "--epochs", "1", "--out", str(tmp_path / "run"),
                     *QUICK]) == 0
    environment = json.loads((tmp_path / "run" / "metrics.json").read_text())["environment"]
    assert environment["cpus"] == os.cpu_count()
    assert environment["blas_threads"] and set(environment["blas_threads"].values()) == {threads}


def test_the_loss_plot_of_a_diverged_run_shows_it(tmp_path, monkeypatch):
    from xpnn import plots
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, **kwargs: figures.append(fig))
    loss = [2.3, 1e4, 1e9, float("nan"), float("inf"), float("nan")]
    plots.learning_curves(loss, [0.1, 0.1], [0.1, 0.1], tmp_path / "curves.png")
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlim() == (0, 7)
    assert "first non-finite loss (iteration 4, 3 in all)" in ax.get_legend_handles_labels()[1]
    plots.learning_curves([2.3, 2.0, 1.7], [0.1, 0.5], [0.1, 0.5], tmp_path / "curves.png")
    assert figures[1].axes[0].get_yscale() == "linear"


# ---------------------------------------------------------------------------- the run's report

def test_an_interrupted_run_reports_its_finished_epochs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    seen = []

    class Watched(interrupted_after(steps=24 + 24 + 10)):        # in epoch 3 of 4
        def _step(self, idx):
            if self.t == 24 + 5:      # in epoch 2: the report is the first epoch's, current
                seen.append(json.loads((out / "metrics.json").read_text()))
            super()._step(idx)
    monkeypatch.setattr(train, "Solver", Watched)
    assert main(["train", *FC, "--epochs", "4", "--out", str(out), *QUICK]) == 130
    said = capsys.readouterr()
    assert f"wrote {out}/metrics.json, curves.png: the 2 finished epochs" in said.out
    assert said.err.endswith(f"continue with: xpnn train --resume {out}\n")
    assert seen[0]["status"] == "training" and seen[0]["epochs_done"] == 1
    assert len(seen[0]["val_acc_history"]) == 2 and seen[0]["iterations"] == 24
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs_done"] == 2
    assert metrics["iterations"] == 48 and len(metrics["val_acc_history"]) == 3
    assert metrics["continue_with"] == f"xpnn train --resume {out}"
    assert metrics["test_acc"] is None and metrics["sessions"][0]["epochs"] == [1, 2]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "model.npz").exists()

    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs_done"] == 4
    assert [s["epochs"] for s in metrics["sessions"]] == [[1, 2], [3, 4]]
    assert "continue_with" not in metrics and metrics["test_acc"] > 0.5


def test_keep_checkpoints_keeps_the_newest(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FC, "--epochs", "4", "--keep-checkpoints", "2", "--out", str(out),
                 *QUICK]) == 0
    assert sorted(p.name for p in out.glob("checkpoint_*")) == ["checkpoint_epoch_3.npz",
                                                                "checkpoint_epoch_4.npz"]
    # A resumed run continues from the newest, and may change how many it keeps.
    assert main(["train", "--resume", str(out), "--epochs", "5", "--keep-checkpoints", "1"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert [p.name for p in out.glob("checkpoint_*")] == ["checkpoint_epoch_5.npz"]
    with pytest.raises(SystemExit):
        main(["train", *FC, "--keep-checkpoints", "0", *QUICK])
    assert "argument --keep-checkpoints: expected a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------- small things

def test_python_dash_m_xpnn_is_the_command():
    done = subprocess.run([sys.executable, "-m", "xpnn", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("xpnn "), done.stderr


@pytest.mark.parametrize("command", ["info", "eval"])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, command):
    # `xpnn eval ... | head -1`: the reader is gone before (most of) the output is written.
    out = tmp_path / "run"
    assert main(["train", "--model", "softmax", "--epochs", "1", "--out", str(out), *QUICK]) == 0
    pictures = ["--out", str(tmp_path)] if command == "eval" else []
    proc = subprocess.Popen([sys.executable, "-m", "xpnn", command, "--checkpoint",
                             str(out / "model.npz"), *pictures],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                            # as `head` does once it has its line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err      # SIGPIPE's status, as Unix tools
    assert err == ""                       # no "[Errno 32] Broken pipe", no traceback


def test_eval_and_selftest_threads_help_speaks_of_their_own_work():
    _, commands = make_parser()
    for name in ("eval", "selftest"):
        text = next(a.help for a in commands[name].arguments if "--threads" in a.option_strings)
        assert "train" not in text, (name, text)
    text = next(a.help for a in commands["train"].arguments if "--threads" in a.option_strings)
    assert "training steps" in text


def test_in_a_notebook_without_ipywidgets_the_progress_bar_is_text_without_a_warning(tmp_path):
    # Jupyter without ipywidgets: tqdm.auto warned "IProgress not found" before falling back.
    source = """
        import sys, types, warnings
        import IPython
        sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")   # a kernel
        sys.modules["ipywidgets"] = None                                              # no widgets
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from tqdm import std
            import xpnn.solver
        assert not caught, [str(w.message) for w in caught]
        assert xpnn.solver.autonotebook.tqdm is std.tqdm        # the text bar
        print("ok")
    """
    import textwrap
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_readmes_output_files_are_git_ignored():
    import fnmatch
    import re
    root = Path(__file__).resolve().parents[1]
    ignored = [l.strip() for l in (root / ".gitignore").read_text().splitlines() if l.strip()]
    readme = (root / "README.md").read_text()
    for name in re.findall(r"--predictions (\S+)", readme) + ["runs/"]:
        assert any(fnmatch.fnmatch(name, pattern) or name == pattern for pattern in ignored), name


def test_ctrl_c_after_some_epochs_leaves_their_report(tmp_path):
    """A real Ctrl-C to a real run, once its second checkpoint is there: metrics.json and
    curves.png describe the epochs that finished (at least those two), status interrupted."""
    out = tmp_path / "run"
    args = ["train", "--model", "mnist-cnn", "--epochs", "2000", "--batch-size", "10",
            "--num-train", "200", "--out", str(out), *QUICK]
    proc = subprocess.Popen([sys.executable, "-m", "xpnn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoint_epoch_2.npz").exists() and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    try:
        said, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    metrics = json.loads((out / "metrics.json").read_text())
    done = max(int(p.stem.split("_")[-1]) for p in out.glob("checkpoint_epoch_*.npz"))
    assert metrics["status"] == "interrupted" and metrics["epochs_done"] == done >= 2
    assert len(metrics["val_acc_history"]) == done + 1 and metrics["iterations"] == 20 * done
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"the {done} finished epochs (status: interrupted)" in said


def test_an_interrupt_between_a_checkpoint_and_its_report_reports_that_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    ended = report.RunReport.epoch_ended

    def interrupted_at_the_second(self, solver, checkpoint):
        if solver.epoch == 2:
            raise KeyboardInterrupt          # checkpoint_epoch_2.npz is saved, its report not
        ended(self, solver, checkpoint)
    monkeypatch.setattr(report.RunReport, "epoch_ended", interrupted_at_the_second)
    assert main(["train", *FC, "--epochs", "4", "--out", str(out), *QUICK]) == 130
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "checkpoint_epoch_2.npz").is_file()
    assert metrics["status"] == "interrupted" and metrics["epochs_done"] == 2
    assert metrics["iterations"] == 48 and len(metrics["val_acc_history"]) == 3
