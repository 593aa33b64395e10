"""Image captioning end to end, on a data set this script makes: CS231n assignment 3's
CaptioningRNN (or CaptioningTransformer) and its solver, trained on xpnn in a few seconds.

Each "image" is a feature vector, as the assignment's VGG-16 features: here a fixed random
projection of what the picture shows (a color, a shape, a size) plus noise. Its caption says
what it shows: "<START> a big red circle <END>". The model learns to read the features and
say it; the validation images are new draws (new noise) of the same kinds.

    python examples/shapes_captioning.py                    # LSTM on the CPU
    python examples/shapes_captioning.py --cell rnn
    python examples/shapes_captioning.py --cell transformer
    python examples/shapes_captioning.py --device cuda      # needs CuPy and a GPU
"""
import argparse
import time

import numpy as np

from xpnn.captioning import CaptioningRNN, CaptioningTransformer
from xpnn.captioning_solver import CaptioningSolver, CaptioningSolverTransformer
from xpnn.coco import decode_captions

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")


def make_data(num_train=600, num_val=120, feature_dim=32, noise=0.3, seed=0):
    """load_coco_data's dict (captions, image indices, features, urls, vocabulary) for
    made-up pictures: one caption per picture, padded with <NULL> to the same length."""
    rng = np.random.default_rng(seed)
    words = ["<NULL>", "<START>", "<END>", "a", *SIZES, *COLORS, *SHAPES]
    word_to_idx = {w: i for i, w in enumerate(words)}
    kinds = len(COLORS) + len(SHAPES) + len(SIZES)
    projection = rng.standard_normal((kinds, feature_dim))   # what a "camera" makes of a scene
    data = {"word_to_idx": word_to_idx, "idx_to_word": words}
    for split, n in (("train", num_train), ("val", num_val)):
        color = rng.integers(len(COLORS), size=n)
        shape = rng.integers(len(SHAPES), size=n)
        size = rng.integers(len(SIZES), size=n)
        present = np.zeros((n, kinds))
        present[np.arange(n), color] = 1
        present[np.arange(n), len(COLORS) + shape] = 1
        present[np.arange(n), len(COLORS) + len(SHAPES) + size] = 1
        features = present @ projection + noise * rng.standard_normal((n, feature_dim))
        captions = np.array([[word_to_idx[w] for w in
                              ("<START>", "a", SIZES[z], COLORS[c], SHAPES[s], "<END>")]
                             for c, s, z in zip(color, shape, size)])
        data[f"{split}_features"] = features.astype(np.float32)
        data[f"{split}_captions"] = captions
        data[f"{split}_image_idxs"] = np.arange(n)
        data[f"{split}_urls"] = np.array([f"{split}/{i}.png" for i in range(n)])
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("lstm", "rnn", "transformer"), default="lstm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)

    data = make_data()
    np.random.seed(231)                 # the solver draws its minibatches as the assignment's
    started = time.perf_counter()
    if args.cell == "transformer":
        model = CaptioningTransformer(data["word_to_idx"], input_dim=32, wordvec_dim=32,
                                      num_heads=2, num_layers=2, max_length=8, seed=0,
                                      device=args.device)
        solver = CaptioningSolverTransformer(model, data, data["idx_to_word"],
                                             num_epochs=args.epochs, batch_size=50,
                                             learning_rate=2e-3, print_every=40)
    else:
        model = CaptioningRNN(data["word_to_idx"], input_dim=32, wordvec_dim=32, hidden_dim=64,
                              cell_type=args.cell, seed=0, device=args.device)
        solver = CaptioningSolver(model, data, update_rule="adam", num_epochs=args.epochs,
                                  batch_size=50, optim_config={"learning_rate": 5e-3},
                                  lr_decay=0.95, print_every=40)
    solver.train()
    if args.cell == "transformer":
        model.eval()                    # no dropout when captioning new pictures

    backend = model.backend
    for split in ("train", "val"):
        features = backend.to_device(data[f"{split}_features"])
        said = decode_captions(model.sample(features, max_length=6), data["idx_to_word"])
        truth = decode_captions(data[f"{split}_captions"][:, 1:], data["idx_to_word"])
        exact = np.mean([s == t for s, t in zip(said, truth)])
        print(f"{split} exact match: {exact:.2f}")
    for s in said[::40]:
        print("  ", s)
    print(f"({args.cell}, {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
