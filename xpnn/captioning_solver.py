"""The training loops of CS231n assignment 3: CaptioningSolver (the RNN notebooks, any update
rule of xpnn.optim) and CaptioningSolverTransformer (the Transformer notebook, Adam with
PyTorch's defaults). Host code: minibatches are drawn on the host from load_coco_data's dict
and moved to the model's device; only the loss comes back.
"""
from __future__ import annotations

from . import optim
from .backend import backend_of
from .coco import sample_coco_minibatch

__all__ = ["CaptioningSolver", "CaptioningSolverTransformer"]


def _model_backend(model):
    return backend_of(next(iter(model.params.values())))


def _batch(model, data, batch_size):
    """A training minibatch (drawn as the assignment's, from NumPy's global generator), on
    the model's device."""
    captions, features, _ = sample_coco_minibatch(data, batch_size=batch_size, split="train")
    backend = _model_backend(model)
    return backend.to_device(features), backend.to_device(captions)


class CaptioningSolver:
    """Trains a captioning model with `model.loss(features, captions) -> (loss, grads)`.

    data: load_coco_data's dict (train_captions, train_image_idxs, train_features, ...).
    Keyword arguments (the assignment's): update_rule ("sgd", or any name in xpnn.optim),
    optim_config (for every parameter), lr_decay (per epoch), batch_size (100),
    num_epochs (10), print_every (10), verbose (True).
    Attributes: epoch, loss_history, optim_configs (and, as the assignment's, best_val_acc,
    best_params, train_acc_history, val_acc_history, which stay as they start).
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        self.data = data
        self.update_rule = kwargs.pop("update_rule", "sgd")
        self.optim_config = kwargs.pop("optim_config", {})
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        self.batch_size = kwargs.pop("batch_size", 100)
        self.num_epochs = kwargs.pop("num_epochs", 10)
        self.print_every = kwargs.pop("print_every", 10)
        self.verbose = kwargs.pop("verbose", True)
        if kwargs:
            raise ValueError(f"Unrecognized arguments {', '.join(map(repr, kwargs))}")
        # A rule by name is one of xpnn.optim's update rules, not any function of the module.
        self.update_rule = optim.get_update_rule(self.update_rule)
        self._reset()

    def _reset(self):
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    def _step(self):
        features, captions = _batch(self.model, self.data, self.batch_size)
        backend = _model_backend(self.model)
        with backend:
            loss, grads = self.model.loss(features, captions)
            self.loss_history.append(loss)
            for name, w in self.model.params.items():
                next_w, self.optim_configs[name] = self.update_rule(w, grads[name],
                                                                    self.optim_configs[name])
                self.model.params[name] = next_w

    def _iterations(self):
        num_train = self.data["train_captions"].shape[0]
        per_epoch = max(num_train // self.batch_size, 1)
        return per_epoch, self.num_epochs * per_epoch

    def train(self):
        """Run the optimization: num_epochs epochs of num_train // batch_size steps."""
        per_epoch, num_iterations = self._iterations()
        for t in range(num_iterations):
            self._step()
            if self.verbose and t % self.print_every == 0:
                print(f"(Iteration {t + 1} / {num_iterations}) loss: {self.loss_history[-1]:f}")
            if (t + 1) % per_epoch == 0:
                self.epoch += 1
                for config in self.optim_configs.values():
                    if "learning_rate" in config:
                        config["learning_rate"] *= self.lr_decay


class CaptioningSolverTransformer(CaptioningSolver):
    """Trains a CaptioningTransformer with Adam as PyTorch's torch.optim.Adam(params, lr)
    (betas 0.9, 0.999, eps 1e-8, no weight decay), as the assignment's solver. Like it, this
    trains the model in whatever mode it is in (it never calls train() or eval()).

    Keyword arguments: learning_rate (1e-3), batch_size (100), num_epochs (10),
    print_every (10), verbose (True). idx_to_word is kept for decoding samples.
    """

    def __init__(self, model, data, idx_to_word, **kwargs):
        unknown = set(kwargs) - {"learning_rate", "batch_size", "num_epochs", "print_every",
                                 "verbose"}
        if unknown:
            raise ValueError(f"Unrecognized arguments {', '.join(map(repr, sorted(unknown)))}")
        self.idx_to_word = idx_to_word
        self.learning_rate = kwargs.pop("learning_rate", 0.001)
        # No learning-rate decay: the assignment's Adam keeps its rate.
        super().__init__(model, data, update_rule="adam", lr_decay=1.0,
                         optim_config={"learning_rate": self.learning_rate}, **kwargs)
