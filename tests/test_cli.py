"""The `xpnn` command line, run as a user runs it."""
import contextlib
import csv
import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xpnn.cli import main
from xpnn.data import get_data
from xpnn.io import atomic_savez, load_npz
from xpnn.models import FullyConnectedNet, load, mnist_cnn

# One fixed thread: runs compared bit for bit must not let the thread policy choose (the
# count it measures can differ between two runs, and it decides the last bits; the
# policy itself is tested in test_threads.py).
QUICK = ["--dataset", "digits", "--quiet", "--seed", "0", "--threads", "1"]


def xpnn(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "xpnn.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_train_writes_metrics_plots_and_model(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", "fc", "--hidden", "64", "--epochs", "3", "--out", str(out), *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.85 and len(metrics["val_acc_history"]) == 4
    for name in ("curves.png", "weights.png", "model.npz", "checkpoint_epoch_3.npz"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model,options", [("softmax", []), ("twolayer", ["--hidden", "16"]),
                                           ("mnist-cnn", []), ("gap-cnn", []),
                                           ("threelayer-cnn", ["--hidden", "16"])])
def test_train_every_model(tmp_path, model, options):
    assert main(["train", "--model", model, "--epochs", "2", "--lr", "1e-2", "--out", str(tmp_path),
                 *options, *QUICK]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] > 0.5


def test_eval_writes_submission_csv(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--model", "mnist-cnn", "--epochs", "2", "--out", str(out), *QUICK])
    trained = json.loads((out / "metrics.json").read_text())["test_acc"]
    csv_path = tmp_path / "pred.csv"
    assert main(["eval", "--checkpoint", str(out / "model.npz"), "--dataset", "digits",
                 "--device", "cpu", "--predictions", str(csv_path)]) == 0
    assert f"{trained:.4f}" in capsys.readouterr().out     # same model, same accuracy
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["Id", "Category"] and len(rows) == 298
    assert rows[1][0] == "1" and 0 <= int(rows[1][1]) <= 9
    # A per-epoch training checkpoint evaluates too, with the same preprocessing: the last
    # epoch was the best one here, so it holds the same weights as model.npz.
    val = json.loads((out / "metrics.json").read_text())["val_acc_history"]
    assert max(val) == val[-1]
    assert main(["eval", "--checkpoint", str(out / "checkpoint_epoch_2.npz"), "--dataset", "digits"]) == 0
    assert f"{trained:.4f}" in capsys.readouterr().out


def test_sweep_summary(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", "fc", "--epochs", "1", "--lr", "1e-3,1e-2", "--reg", "0",
                 "--hidden", "16,32", "--out", str(out), *QUICK]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["rows"]) == 4
    assert result["best"]["val_acc"] == max(r["val_acc"] for r in result["rows"])
    assert (out / "sweep.png").stat().st_size > 0 and "val_acc" in (out / "sweep.txt").read_text()
    random_args = ["sweep", "--model", "fc", "--epochs", "1", "--lr", "1e-4,1e-2", "--reg", "1e-5,1e-2",
                   "--random", "3", *QUICK]
    assert main([*random_args, "--out", str(out)]) == 2          # never over an earlier sweep
    assert main([*random_args, "--out", str(tmp_path / "random")]) == 0
    rows = json.loads((tmp_path / "random" / "sweep.json").read_text())["rows"]
    assert len(rows) == 3 and all(1e-4 <= r["lr"] <= 1e-2 and 1e-5 <= r["reg"] <= 1e-2 for r in rows)


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "0"], "expected a positive integer, got 0"),
    (["train", "--lr", "-1"], "expected a finite number >= 0"),
    (["train", "--lr", "nan"], "expected a finite number"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--batch-size", "ten"], "expected a positive integer, got 'ten'"),
    (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
    (["train", "--hidden", "10,x"], "comma-separated integers"),
    (["train", "--hidden", "100,,50"], "argument --hidden: expected comma-separated integers, "
                                       "got '100,,50' (an empty item)"),
    (["sweep", "--lr", "1e-3,"], "argument --lr: expected comma-separated numbers, got '1e-3,'"),
    (["train", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["sweep", "--lr", "0,1e-3"], "argument --lr: expected a number > 0, got 0"),
    (["sweep", "--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
])
def test_invalid_cli_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_gpu_says_how_to_install(capsys, no_cupy):
    assert main(["train", "--device", "cuda", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and "pip install" in err


def test_eval_of_a_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert main(["eval", "--checkpoint", str(bad), "--dataset", "digits"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """Kill a real training process (SIGKILL, no clean-up) after a checkpoint, resume it, and
    compare with an uninterrupted run: on the CPU the final weights are bitwise identical."""
    args = ["train", "--model", "mnist-cnn", "--epochs", "12", "--batch-size", "10",
            "--num-train", "400", *QUICK]
    reference = xpnn(*args, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "xpnn.cli", *args, "--out", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint_epoch_2.npz").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "model.npz").exists(), "the run finished before it could be interrupted"
    epochs_done = sorted(int(p.stem.split("_")[-1]) for p in run_dir.glob("checkpoint_epoch_*.npz"))
    assert 2 <= epochs_done[-1] < 12

    resumed = xpnn("train", "--resume", str(run_dir), "--quiet")   # the run's own settings
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run_dir / f'checkpoint_epoch_{epochs_done[-1]}.npz'}" in resumed.stdout
    ref_arrays, _ = load_npz(tmp_path / "ref" / "model.npz")
    run_arrays, _ = load_npz(run_dir / "model.npz")
    assert ref_arrays.keys() == run_arrays.keys()
    for key in ref_arrays:
        np.testing.assert_array_equal(run_arrays[key], ref_arrays[key], err_msg=key)
    ref_metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run_metrics["val_acc_history"] == ref_metrics["val_acc_history"]
    assert run_metrics["test_acc"] == ref_metrics["test_acc"]


def test_no_run_is_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "softmax", "--epochs", "1", *QUICK]
    assert main(args) == 0 and main(args) == 0        # default directories are numbered
    first, second = tmp_path / "runs/softmax-digits", tmp_path / "runs/softmax-digits-2"
    assert (first / "model.npz").is_file() and (second / "model.npz").is_file()
    before = (first / "model.npz").read_bytes()
    assert main([*args, "--out", str(first)]) == 2   # an explicit --out holding a run: refused
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume {first}" in err
    assert (first / "model.npz").read_bytes() == before


def test_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), *QUICK]) == 2
    assert "not an xpnn run directory" in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--model", "softmax", "--epochs", "1", "--out", str(blocker / "run"), *QUICK]) == 2
    assert "xpnn train: error:" in capsys.readouterr().err


def test_train_and_eval_on_cifar_files(tmp_path, capsys):
    from xpnn import data
    rng = np.random.default_rng(0)
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data.write_cifar_batch(cifar / name, rng.integers(0, 256, (30, 3072)), np.arange(30) % 10)
    out = tmp_path / "run"
    assert main(["train", "--model", "threelayer-cnn", "--dataset", "cifar10", "--data-dir", str(cifar),
                 "--hidden", "16", "--epochs", "1", "--batch-size", "10", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "cifar10" and 0 <= metrics["test_acc"] <= 1
    assert main(["eval", "--checkpoint", str(out / "model.npz"), "--dataset", "cifar10",
                 "--data-dir", str(cifar)]) == 0
    assert "cifar10 test accuracy" in capsys.readouterr().out
    # The run records its --data-dir (run.json): eval of a checkpoint in it needs none.
    assert main(["eval", "--checkpoint", str(out / "checkpoint_epoch_1.npz")]) == 0
    said = capsys.readouterr().out
    assert f"note: reading cifar10 from {cifar} (the --data-dir of {out / 'run.json'})" in said
    assert "cifar10 test accuracy" in said


def test_eval_finds_a_relative_data_dir_from_where_the_run_started(tmp_path, monkeypatch, capsys):
    from xpnn import data
    rng = np.random.default_rng(0)
    project = tmp_path / "project"
    (project / "data" / "cifar").mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data.write_cifar_batch(project / "data" / "cifar" / name,
                               rng.integers(0, 256, (20, 3072)), np.arange(20) % 10)
    monkeypatch.chdir(project)
    assert main(["train", "--model", "softmax", "--dataset", "cifar10", "--data-dir", "data/cifar",
                 "--epochs", "1", "--batch-size", "10", "--out", "runs/r", "--quiet"]) == 0
    monkeypatch.chdir(tmp_path)                   # elsewhere: data/cifar is not found from here
    assert main(["eval", "--checkpoint", "project/runs/r/model.npz"]) == 0
    said = capsys.readouterr().out
    assert f"reading cifar10 from {project / 'data' / 'cifar'}" in said and "test accuracy" in said
    # Another data set than the run's: its --data-dir is not that one's.
    assert main(["eval", "--checkpoint", "project/runs/r/model.npz", "--dataset", "mnist"]) == 2
    assert "reading" not in capsys.readouterr().out


# ---------------------------------------------------------------------------- eval and info

@pytest.fixture(scope="module")
def trained_fc(tmp_path_factory):
    """A small fc net trained on digits by `xpnn train`, and what train printed."""
    out = tmp_path_factory.mktemp("fc") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--model", "fc", "--hidden", "32", "--epochs", "2", "--out", str(out), *QUICK]) == 0
    return out, printed.getvalue()


def eval_accuracy(text):
    """(correct, total) from eval's 'digits test accuracy: 0.9630 (286 / 297) on cpu' line."""
    line = next(l for l in text.splitlines() if "test accuracy:" in l)
    correct, total = line.split("(")[1].split(")")[0].split(" / ")
    return int(correct), int(total)


def test_train_prints_the_model_summary_first(trained_fc):
    out, printed = trained_fc
    summary = load(out / "model.npz").summary()     # the model as saved, summarised the same
    assert printed.startswith(summary + "\n")
    assert "FullyConnectedNet" in summary and "trained on: digits" in summary
    assert printed.index("total:") < printed.index("training fc on digits")


def test_api_predict_on_raw_images_matches_eval(trained_fc, tmp_path, capsys):
    out, _ = trained_fc
    # No --dataset: the data set recorded with the model (digits), not the old default mnist.
    assert main(["eval", "--checkpoint", str(out / "model.npz"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    correct, total = eval_accuracy(printed)
    assert printed.startswith("digits test accuracy")
    assert correct / total == pytest.approx(json.loads((out / "metrics.json").read_text())["test_acc"])
    # Through the API: raw images as loaded (no mean subtracted), the model's own preprocessing.
    raw = get_data("digits", subtract_mean=False)
    predictions = load(out / "model.npz").predict(raw["X_test"])
    assert int(np.sum(predictions == raw["y_test"])) == correct and len(predictions) == total
    # Per class: the correct counts add up to the total correct, the images to the test set.
    table = printed.split("per-class accuracy:\n")[1].splitlines()[1:11]
    rows = [line.split() for line in table]
    assert [r[0] for r in rows] == [str(c) for c in range(10)]
    assert sum(int(r[2]) for r in rows) == correct and sum(int(r[3]) for r in rows) == total
    for r in rows:
        assert float(r[1]) == pytest.approx(int(r[2]) / int(r[3]), abs=1e-4)
    picture = tmp_path / "model_confusion_digits.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {picture}" in printed


def test_eval_of_a_file_without_preprocessing_recomputes_the_mean(trained_fc, tmp_path, capsys):
    """A model.npz from before models carried their preprocessing gets train's mean image."""
    out, _ = trained_fc
    arrays, meta = load_npz(out / "model.npz")
    del arrays["preprocess/mean"]
    atomic_savez(tmp_path / "old.npz", arrays, meta)
    assert main(["eval", "--checkpoint", str(tmp_path / "old.npz")]) == 0
    printed = capsys.readouterr().out
    correct, total = eval_accuracy(printed)
    assert "records no preprocessing" in printed
    assert correct / total == pytest.approx(json.loads((out / "metrics.json").read_text())["test_acc"])
    assert (tmp_path / "old_confusion_digits.png").is_file()   # beside the checkpoint


@pytest.mark.parametrize("make,expected", [
    (lambda: mnist_cnn(seed=0), ["expects (1, 28, 28) images", "'digits' has (1, 8, 8)"]),
    (lambda: FullyConnectedNet([8], input_dim=784, seed=0), ["inputs of 784 values", "(1, 8, 8) images (64 values)"]),
])
def test_eval_names_a_shape_mismatch_before_preprocessing(tmp_path, capsys, make, expected):
    model = make()
    model.dataset = "mnist"
    model.set_preprocessing(mean=np.zeros((1, 28, 28), np.float32))
    model.save(tmp_path / "m.npz")
    assert main(["eval", "--checkpoint", str(tmp_path / "m.npz"), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected) and "trained on 'mnist'" in err
    assert "broadcast" not in err


def test_eval_of_a_model_that_names_no_data_set(tmp_path, capsys):
    FullyConnectedNet([8], input_dim=64, seed=0).save(tmp_path / "m.npz")
    assert main(["eval", "--checkpoint", str(tmp_path / "m.npz")]) == 2
    assert "name one with --dataset" in capsys.readouterr().err


def test_eval_on_another_data_set_than_the_model_was_trained_on_says_so(tmp_path, capsys):
    model = FullyConnectedNet([8], input_dim=64, seed=0)
    model.dataset = "mnist"            # an 8x8 "mnist": only the name differs from digits
    model.save(tmp_path / "m.npz")
    assert main(["eval", "--checkpoint", str(tmp_path / "m.npz"), "--dataset", "digits"]) == 0
    assert "was trained on mnist; evaluating it on digits" in capsys.readouterr().out


def test_eval_refuses_labels_beyond_the_models_classes(tmp_path, capsys):
    model = FullyConnectedNet([8], input_dim=64, num_classes=5, seed=0)
    model.save(tmp_path / "m.npz")
    assert main(["eval", "--checkpoint", str(tmp_path / "m.npz"), "--dataset", "digits"]) == 2
    assert "has 5 classes" in capsys.readouterr().err


def test_info_describes_a_model_and_a_training_checkpoint(trained_fc, capsys):
    out, _ = trained_fc
    assert main(["info", "--checkpoint", str(out / "model.npz")]) == 0
    printed = capsys.readouterr().out
    model = load(out / "model.npz")
    assert model.summary() in printed
    assert "trained on: digits" in printed and "float32" in printed
    assert "preprocessing: subtract an array of shape (64,)" in printed
    assert main(["info", "--checkpoint", str(out / "checkpoint_epoch_1.npz")]) == 0
    assert "training checkpoint: epoch 1 of 2" in capsys.readouterr().out
    assert main(["info", "--checkpoint", str(out / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_into_an_unwritable_directory_names_it_and_keeps_the_predictions(trained_fc, tmp_path, capsys):
    out, _ = trained_fc
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    csv_path = tmp_path / "pred.csv"
    assert main(["eval", "--checkpoint", str(out / "model.npz"), "--out", str(blocker / "pics"),
                 "--predictions", str(csv_path)]) == 2
    err = capsys.readouterr().err
    assert str(blocker / "pics" / "model_confusion_digits.png") in err and "--out" in err
    assert len(csv_path.read_text().splitlines()) == 298


def test_selftest_fails_when_the_gpu_asked_for_is_missing(capsys, no_cupy):
    assert main(["selftest", "--device", "cuda"]) == 1
    out = capsys.readouterr().out
    assert "GPU available" in out and "FAIL" in out and "needs CuPy" in out
    assert main(["selftest"]) == 0                   # no device named: the CPU checks, GPU skipped
    assert "SKIP" in capsys.readouterr().out


def test_paths_of_the_wrong_kind_are_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.npz").write_bytes(b"")
    assert main(["eval", "--checkpoint", str(run), "--dataset", "digits"]) == 2
    assert f"is a directory; pass {run / 'model.npz'}" in capsys.readouterr().err
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    assert main(["train", "--dataset", "mnist", "--data-dir", str(afile), "--quiet"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    assert main(["eval", "--checkpoint", str(tmp_path / "plain.npz"), "--dataset", "digits"]) == 2
    assert "is not an xpnn model file (no model description)" in capsys.readouterr().err


def test_a_misspelt_option_is_answered_by_its_command_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--modle", "fc"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: xpnn train" in err and "unrecognized arguments: --modle fc (did you mean --model?)" in err


def test_more_training_images_than_the_data_set_has_are_refused(tmp_path, capsys):
    # digits: 1,200 training images once the validation split is taken. Capping silently
    # would train a smaller run than asked for.
    for command in (["train", "--out", str(tmp_path / "run")], ["sweep", "--out", str(tmp_path / "s")]):
        assert main([*command, "--model", "softmax", "--num-train", "1000000", *QUICK]) == 2
        err = capsys.readouterr().err
        assert "--num-train 1000000: digits has 1,200 training images" in err
        assert "give at most 1200" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()


def test_predictions_into_a_missing_directory_are_refused_before_any_work(trained_fc, tmp_path, capsys):
    target = tmp_path / "nonexistent" / "dir" / "p.csv"
    assert main(["eval", "--checkpoint", str(trained_fc[0] / "model.npz"), "--predictions",
                 str(target)]) == 2
    err = capsys.readouterr().err
    assert f"directory {target.parent} does not exist; create it first" in err
    assert not (tmp_path / "nonexistent").exists()
    assert main(["eval", "--checkpoint", str(trained_fc[0] / "model.npz"), "--predictions",
                 str(tmp_path)]) == 2
    assert f"--predictions {tmp_path} is a directory: name a file" in capsys.readouterr().err


def test_the_commands_that_compute_and_only_they_tune_the_allocator(tmp_path, monkeypatch, capsys):
    # A library call never changes process-wide state; the command, owning its process, does.
    import xpnn.cli as cli
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory_for_reuse", lambda: calls.append(True))
    missing = str(tmp_path / "missing.npz")
    assert main(["info", "--checkpoint", missing]) == 2
    assert calls == []
    assert main(["eval", "--checkpoint", missing]) == 2
    assert calls == [True]
