"""`xpnn info`: what a saved model is (its layers, shapes, parameters, preprocessing) and,
for a training checkpoint, how far its training got."""
from __future__ import annotations

from ..io import load_npz
from ..nn import model_from_arrays
from .options import add_command

EXAMPLES = """examples:
  xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
  xpnn info --checkpoint runs/mnist-cnn-mnist/checkpoint_epoch_2.npz   # and its training state"""


def add_parser(commands):
    info = add_command(commands, "info", "describe a saved model: layers, shapes, parameters, "
                       "preprocessing, what it was trained on", EXAMPLES)
    info.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint_epoch_K.npz")


def run(args):
    arrays, meta = load_npz(args.checkpoint)
    model = model_from_arrays(arrays, meta, source=args.checkpoint)
    print(f"{args.checkpoint}: written by xpnn {meta.get('xpnn', '(unknown version)')}")
    print(model.summary())
    state = meta.get("solver")
    if state is not None:
        print(f"training checkpoint: epoch {state['epoch']} of {state['num_epochs']}, "
              f"{state['t']} iterations, best validation accuracy {state['best_val_acc']:.4f}")
    return 0
