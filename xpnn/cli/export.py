"""`xpnn export`: a saved model as a PyTorch (torch.export) program or an ONNX model."""
from __future__ import annotations

from pathlib import Path

from ..export import save_torch, to_onnx
from ..io import load_npz
from ..nn import model_from_arrays
from .options import add_command

EXAMPLES = """examples:
  xpnn export --checkpoint runs/mnist-cnn-mnist/model.npz --format onnx --out mnist.onnx
  xpnn export --checkpoint model.npz --format torch --out model.pt2 --raw-inputs

torch writes a torch.export program: torch.export.load("model.pt2").module()(x). The
exported model outputs class scores (N, classes); with --raw-inputs it first applies the
model's preprocessing (the training mean image), so that it takes images as they are loaded."""


def add_parser(commands):
    export = add_command(commands, "export", "write a saved model as a PyTorch (torch.export) or "
                         "ONNX file", EXAMPLES)
    export.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint_epoch_K.npz")
    export.add_argument("--format", choices=("torch", "onnx"), default="onnx",
                        help="torch: a torch.export program (.pt2); onnx (default): an ONNX model")
    export.add_argument("--out", metavar="FILE", help="the file to write (default: the checkpoint's "
                        "name with .pt2 or .onnx)")
    export.add_argument("--raw-inputs", action="store_true",
                        help="include the model's preprocessing: the file takes raw images")


def run(args):
    model = model_from_arrays(*load_npz(args.checkpoint), source=args.checkpoint)
    suffix = ".pt2" if args.format == "torch" else ".onnx"
    out = Path(args.out or Path(args.checkpoint).with_suffix(suffix))
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory: name a file, e.g. {out / ('model' + suffix)}")
    try:
        write = save_torch if args.format == "torch" else to_onnx
        write(model, out, preprocessing=args.raw_inputs)
    except ImportError as e:
        raise RuntimeError(f"{e}") from None
    inputs = "raw images" if args.raw_inputs else "preprocessed inputs, as model.loss takes"
    print(f"wrote {out}: {type(model).__name__} taking (N, {', '.join(map(str, model.input_shape))}) "
          f"{inputs}, giving class scores (N, {model.output_shape[0]})")
    return 0
