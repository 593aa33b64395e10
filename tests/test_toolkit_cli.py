"""The training toolkit on the command line and through logging (issue 25): --lr-schedule,
--warmup, --augment, --clip-grad-norm, --early-stopping, metrics.csv, the "xpnn" logger."""
import csv
import json
import logging

import numpy as np
import pytest

from xpnn.cli import main
from xpnn.data import get_data
from xpnn.io import load_npz
from xpnn.models import FullyConnectedNet
from xpnn.solver import Solver

FAST = ["--dataset", "digits", "--model", "fc", "--hidden", "24", "--batch-size", "100", "--quiet"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_toolkit_options_train_resume_bit_for_bit(tmp_path):
    opts = FAST + ["--lr-schedule", "plateau:1:0.5", "--augment", "crop,flip",
                   "--clip-grad-norm", "1", "--early-stopping", "20", "--update-rule", "adamw"]
    assert main(["train", *opts, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *opts, "--epochs", "1", "--out", str(tmp_path / "parts")]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "--epochs", "3"]) == 0
    whole, parts = (load_npz(tmp_path / d / "model.npz")[0] for d in ("whole", "parts"))
    assert all(np.array_equal(whole[k], parts[k]) for k in whole)
    a, b = rows(tmp_path / "whole" / "metrics.csv"), rows(tmp_path / "parts" / "metrics.csv")
    assert [r["epoch"] for r in b] == ["1", "2", "3"]
    assert [(r["loss"], r["val_acc"], r["lr"]) for r in a] == [(r["loss"], r["val_acc"], r["lr"]) for r in b]
    settings = json.loads((tmp_path / "parts" / "run.json").read_text())
    assert (settings["lr_schedule"], settings["augment"], settings["clip_grad_norm"]) == \
        ("plateau:1:0.5", "crop,flip", 1.0)


def test_cosine_with_warmup_rates_in_metrics_csv(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "4", "--lr", "0.01", "--lr-schedule", "cosine",
                 "--warmup", "1", "--out", str(out)]) == 0
    rates = [float(r["lr"]) for r in rows(out / "metrics.csv")]
    assert rates == pytest.approx([0.005, 0.01, 0.01 * 0.5 * (1 + np.cos(np.pi / 3)),
                                   0.01 * 0.5 * (1 + np.cos(2 * np.pi / 3))])


def test_metrics_csv_is_written_at_each_epoch_end(tmp_path, monkeypatch):
    from xpnn.cli import train
    seen = []

    class Watching(Solver):
        def save_checkpoint(self, path):       # right after the epoch's callbacks
            seen.append(len(rows(tmp_path / "run" / "metrics.csv")))
            return super().save_checkpoint(path)
    monkeypatch.setattr(train, "Solver", Watching)
    assert main(["train", *FAST, "--epochs", "3", "--out", str(tmp_path / "run")]) == 0
    assert seen == [1, 2, 3]


def test_early_stopping_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST[:-1], "--epochs", "8", "--lr", "0.3", "--early-stopping", "1",
                 "--out", str(out)]) == 0
    done = rows(out / "metrics.csv")
    assert len(done) < 8
    assert f"early stopping after epoch {len(done)}" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_done"] == len(done) and metrics["status"] == "finished"


@pytest.mark.parametrize("args, message", [
    (["--lr-schedule", "cosine", "--lr-decay", "0.5"], "--lr-decay applies to --lr-schedule exp"),
    (["--warmup", "2"], "--warmup applies to --lr-schedule cosine"),
    (["--lr-schedule", "cosine", "--warmup", "3"], "warmup (3 epochs) must be shorter"),
    (["--lr-schedule", "step:x"], "--lr-schedule step:x"),
    (["--augment", "rotate"], "unknown augmentation 'rotate'"),
])
def test_toolkit_options_refuse_bad_values(args, message, tmp_path, capsys):
    assert main(["train", *FAST, "--epochs", "3", "--out", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_library_call_prints_nothing_unless_asked(capsys, caplog):
    data = get_data("digits")
    model = FullyConnectedNet([8], input_dim=64, seed=0)
    with caplog.at_level(logging.INFO, logger="xpnn"):
        Solver(model, data, num_epochs=2, batch_size=200, verbose=False, seed=0).train()
    said = capsys.readouterr()
    assert said.out == "" and said.err == ""
    epochs = [r.getMessage() for r in caplog.records if r.name == "xpnn.solver"]
    assert len(epochs) == 2 and epochs[0].startswith("(Epoch 1 / 2)")
    # CS231n's verbose Solver still prints its lines.
    Solver(model, data, num_epochs=1, batch_size=200, verbose=True, seed=0).train()
    assert "(Epoch 1 / 1)" in capsys.readouterr().out


def test_lenet5_trains_from_the_command_line(tmp_path):
    from xpnn.models import lenet5
    model = lenet5()
    assert [tuple(model.params[k].shape) for k in ("W1", "W2", "W3", "W4", "W5")] == \
        [(12, 1, 5, 5), (24, 12, 5, 5), (600, 120), (120, 84), (84, 10)]
    assert not model.mixes_samples    # no batchnorm or dropout: its steps run as shards
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet5", "--num-train", "1000", "--epochs", "1", "--quiet",
                 "--threads", "1", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_acc"] > 0.6


def read_scalars(folder):
    """{tag: [(step, value)]} from the TFRecord event files in folder (length, crc, event, crc)."""
    import struct
    from tensorboardX.proto import event_pb2
    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at:at + 8])
            event = event_pb2.Event.FromString(raw[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "2", "--tensorboard", "--out", str(out)]) == 0
    scalars = read_scalars(out / "tensorboard")
    table = rows(out / "metrics.csv")
    assert [step for step, _ in scalars["epoch/val_acc"]] == [1, 2]
    assert [v for _, v in scalars["epoch/val_acc"]] == pytest.approx([float(r["val_acc"]) for r in table])
    assert len(scalars["loss/step"]) == 2 * (1200 // 100) // 10


def test_tensorboard_without_tensorboardx_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    assert main(["train", *FAST, "--epochs", "1", "--tensorboard", "--out", str(tmp_path / "r")]) == 2
    assert "pip install tensorboardX" in capsys.readouterr().err
