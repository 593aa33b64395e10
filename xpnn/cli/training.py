"""What `xpnn train` and `xpnn sweep` share: their training options, the checks that refuse an
option the model would silently ignore, the Solver settings made from the options, and the
training data (offered for download when it is missing)."""
from __future__ import annotations

import sys

from ..data import DATASETS, DataError, get_data
from ..optim import UPDATE_RULES
from .options import (DATA_DIR_HELP, DEVICE_HELP, add_threads_arg, device_arg, non_negative_int,
                   positive_float, positive_int, probability)
from .models import MODELS


def add_training_args(p, sweep):
    # A sweep trains many models: on digits' 8x8 images by default, where a fully connected
    # net is the model that fits (mnist-cnn is made for 28x28).
    default_dataset, default_model = ("digits", "fc") if sweep else ("mnist", "mnist-cnn")
    p.add_argument("--model", choices=MODELS, default=default_model,
                   help=f"the network to train (default: {default_model})")
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                   help=f"the images to learn; digits (8x8) trains in seconds (default: {default_dataset})")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--device", type=device_arg, default="cpu", help=DEVICE_HELP)
    p.add_argument("--epochs", type=positive_int, default=3,
                   help="passes over the training set (default: 3)")
    p.add_argument("--update-rule", choices=sorted(UPDATE_RULES), default="adam",
                   help="the optimizer (default: adam)")
    p.add_argument("--lr-decay", type=positive_float, metavar="FACTOR",
                   help="learning-rate factor per epoch (default: anneal to 3%% of --lr by the last epoch)")
    p.add_argument("--lr-schedule", default="exp", metavar="SCHEDULE",
                   help="exp (per epoch by --lr-decay; the default), step:E:G (times G every E "
                        "epochs), cosine (half a cosine over the run, after --warmup), "
                        "plateau[:P[:F]] (times F, default 0.5, after P epochs, default 2, "
                        "without a better validation accuracy)")
    p.add_argument("--warmup", type=non_negative_int, default=0, metavar="N",
                   help="with --lr-schedule cosine: raise the rate linearly over the first N epochs")
    p.add_argument("--clip-grad-norm", type=positive_float, metavar="MAX",
                   help="scale the gradients down when their global L2 norm exceeds MAX")
    p.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                   help="stop when the validation accuracy has not improved for PATIENCE "
                        "epochs (the best epoch's weights are kept either way)")
    p.add_argument("--augment", metavar="WHAT",
                   help="augment the training images: crop (random shifts, zero padded, by "
                        "up to an eighth of the side), crop:P (P pixels), flip (horizontal), "
                        "comma-separated, e.g. crop,flip (default: none)")
    p.add_argument("--init", choices=("gaussian", "xavier", "he"), default="he",
                   help="weight initialisation (default: he)")
    p.add_argument("--normalization", choices=("batchnorm", "layernorm", "groupnorm"),
                   help="normalise each hidden layer of --model fc (default: none)")
    p.add_argument("--dropout", type=probability, metavar="KEEP",
                   help="dropout after each hidden layer of --model fc, KEEP = the probability "
                        "of keeping a unit, e.g. 0.8 (default: no dropout)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds weights, batches, dropout (default: 0)")
    p.add_argument("--num-train", type=positive_int, metavar="N",
                   help="use only the first N training images (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    add_threads_arg(p)


def check_applicable(args):
    """Refuse the options that the chosen model or data set would silently ignore."""
    hidden_layers = MODELS[args.model].hidden_layers
    if args.hidden is not None and hidden_layers == 0:
        raise ValueError(f"--hidden does not apply to --model {args.model}: its layers are fixed "
                         "(--model twolayer, fc or threelayer-cnn take --hidden)")
    if args.command == "train" and args.hidden and hidden_layers == 1 and len(args.hidden) > 1:
        raise ValueError(f"--model {args.model} has one hidden layer, but --hidden gives "
                         f"{len(args.hidden)} sizes; use --model fc for several hidden layers")
    for option, value in (("--normalization", args.normalization), ("--dropout", args.dropout)):
        if value is not None and args.model != "fc":
            raise ValueError(f"{option} applies only to --model fc, not to --model {args.model}")
    if args.lr_schedule != "exp" and args.lr_decay is not None:
        raise ValueError(f"--lr-decay applies to --lr-schedule exp, not to {args.lr_schedule}")
    toolkit_settings(args, image_shape=None)      # --lr-schedule, --warmup, --augment: refused early
    if args.data_dir is not None and not DATASETS[args.dataset].takes_data_dir:
        raise ValueError(f"--data-dir does not apply to --dataset {args.dataset}: it comes with a package")


def lr_decay(args):
    """--lr-decay, or the factor that anneals the rate to 3% of its start over the run."""
    return args.lr_decay if args.lr_decay is not None else 0.03 ** (1 / args.epochs)


def toolkit_settings(args, image_shape):
    """The Solver's lr_decay, lr_schedule, clip_grad_norm and augment from --lr-decay,
    --lr-schedule, --warmup, --clip-grad-norm and --augment (a run.json from before these
    options resumes with their defaults). `exp`, the default schedule, is the Solver's
    lr_decay; any other is an xpnn.schedules schedule."""
    from .. import augment, schedules
    name = getattr(args, "lr_schedule", None) or "exp"
    warmup = getattr(args, "warmup", 0) or 0
    settings = {"lr_decay": lr_decay(args) if name == "exp" else 1.0,
                "clip_grad_norm": getattr(args, "clip_grad_norm", None),
                "augment": augment.parse(getattr(args, "augment", None), image_shape)}
    schedule = schedules.parse(name, args.epochs, warmup, decay=settings["lr_decay"])
    if name != "exp":
        settings["lr_schedule"] = schedule
    if getattr(args, "early_stopping", None):
        from ..callbacks import EarlyStopping
        settings["callbacks"] = [EarlyStopping("val_acc", patience=args.early_stopping)]
    return settings


def training_data(args):
    """get_data for train and sweep; --num-train beyond the training split is refused (it
    would be a smaller run than asked for, silently). A data set that is not here, that
    `xpnn data download` can fetch, is offered for download on a terminal."""
    try:
        data = get_data(args.dataset, data_dir=args.data_dir, num_training=args.num_train)
    except DataError:
        if not offer_download(args):
            raise
        data = get_data(args.dataset, data_dir=args.data_dir, num_training=args.num_train)
    if args.num_train is not None and len(data["X_train"]) < args.num_train:
        raise ValueError(f"--num-train {args.num_train}: {args.dataset} has "
                         f"{len(data['X_train']):,} training images (the rest of its training "
                         f"set is the validation split of {len(data['X_val']):,}); give at most "
                         f"{len(data['X_train'])}, or leave --num-train out to use them all")
    return data


def offer_download(args, ask=None) -> bool:
    """When --dataset is missing (no --data-dir given) and someone is at the terminal, ask
    whether to download it now (xpnn data download); True once it is downloaded."""
    from .. import download
    if args.data_dir is not None or args.dataset not in download.SOURCES \
            or download.downloaded(args.dataset) is not None or not sys.stdin.isatty():
        return False
    answer = (ask or input)(f"{args.dataset} is not on this machine. Download it now into "
                 f"{download.cache_dir() / args.dataset} (SHA-256 checked)? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        return False
    download.download(args.dataset)
    return True
