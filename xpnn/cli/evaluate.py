"""`xpnn eval`: a saved model's accuracy on a data set's test split, per class, as a confusion
matrix picture and, with --predictions, as a CSV file of its predictions."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data import DATASETS, get_data
from ..io import atomic_write_text, load_npz
from ..nn import model_from_arrays
from ..parallel import sharded
from .options import DATA_DIR_HELP, DEVICE_HELP, add_command, add_threads_arg, device_arg
from .rundir import RUN_SETTINGS, read_json

EXAMPLES = """examples:
  xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz       # on the data set it learnt
  xpnn eval --checkpoint runs/fc-digits/checkpoint_epoch_2.npz --out pictures
  xpnn eval --checkpoint model.npz --dataset mnist --predictions submission.csv"""


def add_parser(commands):
    ev = add_command(commands, "eval", "evaluate a saved model on a data set's test split", EXAMPLES)
    ev.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint_epoch_K.npz")
    ev.add_argument("--dataset", choices=DATASETS,
                    help="whose test split to evaluate on (default: the data set the model was "
                         "trained on)")
    ev.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP.replace(
        "(default: ", "(default: the --data-dir of the run the checkpoint sits in, from its "
        "run.json; else "))
    ev.add_argument("--device", type=device_arg, default="cpu", help=DEVICE_HELP)
    ev.add_argument("--predictions", metavar="CSV",
                    help="write the test-set predictions to this CSV file (Id,Category)")
    ev.add_argument("--out", metavar="DIR", help="directory for the confusion-matrix picture "
                    "(default: the checkpoint's directory)")
    add_threads_arg(ev, training=False)


def run(args):
    if args.predictions:         # before any work; a file is written, never a directory made
        check_predictions_file(args.predictions)
    arrays, meta = load_npz(args.checkpoint)          # read once: model and preprocessing
    model = model_from_arrays(arrays, meta, device=args.device, source=args.checkpoint)
    dataset = args.dataset or model.dataset
    if dataset is None:
        raise ValueError(f"{args.checkpoint} does not record the data set it was trained on; "
                         f"name one with --dataset ({', '.join(DATASETS)})")
    X, y = evaluation_split(args, model, dataset)
    predictions = predicted_labels(model, X, args.threads)
    correct = int(np.sum(predictions == y))
    print(f"{dataset} test accuracy: {correct / len(y):.4f} ({correct} / {len(y)}) on {model.device}")
    counts = confusion_counts(y, predictions, model.output_shape[0])
    names = class_names(dataset, len(counts))
    print(per_class_table(counts, names))
    if args.predictions:
        path = Path(args.predictions)
        text = "Id,Category\n" + "".join(f"{i},{c}\n" for i, c in enumerate(predictions, start=1))
        atomic_write_text(path, text)
        print(f"wrote {len(predictions)} predictions to {path}")
    draw_confusion(args, dataset, counts, names, correct / len(y))
    return 0


def predicted_labels(model, X, threads, batch_size=500):
    """model.predict(X), each batch run the way the Solver's accuracy checks run it: on the CPU
    as shards on `threads` cores (xpnn.parallel), the same numbers with any count."""
    net = sharded(model, threads)
    if net is model:
        return model.predict(X, batch_size=batch_size)
    return np.concatenate([np.argmax(net.loss(model.preprocess(X[start:start + batch_size])), axis=1)
                           for start in range(0, X.shape[0], batch_size)])


def check_predictions_file(predictions):
    """Refuse a --predictions that names a directory, or a file in a directory not there."""
    folder = Path(predictions).parent
    if Path(predictions).is_dir():
        raise ValueError(f"--predictions {predictions} is a directory: name a file, "
                         f"e.g. {Path(predictions) / 'predictions.csv'}")
    if not folder.is_dir():
        raise ValueError(f"--predictions {predictions}: directory {folder} "
                         + ("is not a directory" if folder.exists() else "does not exist")
                         + "; create it first, or name a file in an existing directory")


def evaluation_split(args, model, dataset):
    """The data set's test images and labels, checked against the model; a model that
    records no preprocessing gets get_data's (the training mean image) here."""
    data_dir = args.data_dir
    if data_dir is None and DATASETS[dataset].takes_data_dir:
        data_dir = recorded_data_dir(args.checkpoint, dataset)
    data = get_data(dataset, data_dir=data_dir, subtract_mean=False)
    X, y = data["X_test"], data["y_test"]
    check_data_fits(model, X, y, dataset, args.checkpoint)
    if model.dataset not in (None, dataset):
        print(f"note: {args.checkpoint} was trained on {model.dataset}; evaluating it on {dataset}")
    if model.input_mean is None and model.input_scale is None:
        # A file from before models carried their preprocessing: recompute get_data's.
        model.set_preprocessing(mean=data["X_train"].mean(axis=0))
        print(f"note: {args.checkpoint} records no preprocessing; subtracting {dataset}'s "
              "training mean image, as xpnn train does")
    return X, y


def draw_confusion(args, dataset, counts, names, accuracy):
    """CHECKPOINT_confusion_DATASET.png, beside the checkpoint or in --out."""
    from .. import plots
    checkpoint = Path(args.checkpoint)
    picture = Path(args.out or checkpoint.parent) / f"{checkpoint.stem}_confusion_{dataset}.png"
    try:
        plots.confusion_matrix(counts, names, picture, title=f"{checkpoint.name} on {dataset} "
                               f"(test accuracy {accuracy:.2%})")
    except OSError as e:     # e.g. a model in a read-only directory
        raise OSError(f"cannot write {picture} ({e.strerror or e}); choose a directory with --out") from None
    print(f"wrote {picture}")


def recorded_data_dir(checkpoint, dataset):
    """The --data-dir that trained the run a checkpoint sits in (its run.json), when it
    trained on `dataset`; else None. A relative one not found from here is taken from where
    the run was started (the run's --out, relative, leads from there to the run)."""
    settings_path = Path(checkpoint).parent / RUN_SETTINGS
    if not settings_path.is_file():
        return None
    settings = read_json(settings_path)
    recorded = settings.get("data_dir")
    if not recorded or settings.get("dataset") != dataset:
        return None
    path = Path(recorded)
    if not path.is_absolute() and not path.exists():
        out, run_dir = Path(settings.get("out") or "."), settings_path.parent.resolve()
        if not out.is_absolute() and ".." not in out.parts and out.parts \
                and run_dir.parts[-len(out.parts):] == out.parts:
            path = run_dir.parents[len(out.parts) - 1] / path
    print(f"note: reading {dataset} from {path} (the --data-dir of {settings_path}); "
          "give --data-dir to read another copy")
    return str(path)


def check_data_fits(model, X, y, dataset, source):
    """Before any preprocessing: the data set's images must be the model's input and its
    labels the model's classes; otherwise say which, naming both sides."""
    image, wanted = tuple(X.shape[1:]), model.input_shape
    trained = f" (it was trained on {model.dataset!r})" if model.dataset not in (None, dataset) else ""
    if len(wanted) == 1 and math.prod(image) != wanted[0]:
        raise ValueError(f"{source}: the model expects inputs of {wanted[0]} values{trained}, but "
                         f"data set {dataset!r} has {image} images ({math.prod(image)} values)")
    if len(wanted) > 1 and image != wanted:
        raise ValueError(f"{source}: the model expects {wanted} images{trained}, but data set "
                         f"{dataset!r} has {image}")
    classes = model.output_shape[0]
    if y.max() >= classes:
        raise ValueError(f"{source}: the model has {classes} classes, but data set {dataset!r} "
                         f"has labels up to {y.max()}{trained}")


def confusion_counts(y, predictions, num_classes):
    """counts[i, j]: test images of class i predicted as class j."""
    pairs = y.astype(np.int64) * num_classes + predictions
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_names(dataset, num_classes):
    names = DATASETS[dataset].class_names if dataset in DATASETS else ()
    return list(names) if len(names) == num_classes else [str(c) for c in range(num_classes)]


def per_class_table(counts, names):
    """Accuracy per true class: its diagonal count over its row's count."""
    rows = [["class", "accuracy", "correct", "images"]]
    for name, row, hit in zip(names, counts, np.diag(counts)):
        total = int(row.sum())
        rows.append([name, f"{hit / total:.4f}" if total else "-", str(hit), str(total)])
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    return "per-class accuracy:\n" + "\n".join(
        "  " + "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths)))
        for r in rows)
