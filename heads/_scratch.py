"""The from-scratch baseline's estimator: the training loop behind scikit-learn's API.

colhead compares heads trained on a frozen pretrained column with this model, which sees the
same images but no pretraining, to show what the column is worth. What the model is lives in
``_scratch_net.py`` (config, network), what it eats in ``_scratch_data.py``; this module trains
and applies it: ``ScratchClassifier(epochs=20).fit(images, labels).predict(more_images)`` with
uint8 (N, 64, 64, 3) images from the column's preprocessing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm.auto import tqdm

from .._device import autocast_dtype, resolve_device, resolve_precision
from ._scratch_data import augment, check_images, check_labels, split
from ._scratch_data import to_tensor as _to_tensor
from ._scratch_net import ScratchConfig, SmallCNN, check_config

_PREDICT_BATCH = 256  # rows per forward pass in predict: bounds memory, big enough to be fast


def _autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype for the config's precision on ``device`` (None: plain float32)."""
    return autocast_dtype(resolve_precision(precision, device, small_model=True))


class ScratchClassifier(ClassifierMixin, BaseEstimator):
    """A small CNN trained from scratch on raw images, behind scikit-learn's classifier API.

    Args:
        config: The base hyperparameters; `ScratchConfig()` when None.
        **overrides: Any `ScratchConfig` field (channels, lr, image_size, ...) given here
            replaces the config's value, so `clone`, `set_params` and grid searches work on
            single fields: `ScratchClassifier(ScratchConfig.workshop(), image_size=64)`.

    Attributes:
        classes_: The class labels, sorted.
        config_: The `ScratchConfig` the model was trained with.
        model_: The trained `SmallCNN` (best validation weights), in eval mode.
        history_: One dict per epoch: train_loss, train_acc (on the augmented batches),
            val_loss, val_acc (None without a validation set) and seconds.
        best_epoch_: The 1-based epoch whose weights were kept.
        n_params_: Number of trainable parameters.
        fit_seconds_: Wall time of `fit`, preprocessing included.
    """

    def __init__(
        self,
        config: ScratchConfig | None = None,
        *,
        channels: tuple[int, ...] | None = None,
        groups: tuple[int, ...] | None = None,
        pool: int | None = None,
        image_size: int | None = None,
        augment: bool | None = None,
        epochs: int | None = None,
        patience: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        batch_size: int | None = None,
        label_smoothing: float | None = None,
        val_size: float | None = None,
        precision: str | None = None,
        device: str | None = None,
        seed: int | None = None,
        progress: bool | None = None,
    ) -> None:
        # scikit-learn's contract: store the parameters, nothing else (no **kwargs allowed).
        self.config = config
        self.channels, self.groups, self.pool, self.image_size = channels, groups, pool, image_size
        self.augment, self.epochs, self.patience, self.lr = augment, epochs, patience, lr
        self.weight_decay, self.batch_size = weight_decay, batch_size
        self.label_smoothing, self.val_size, self.precision = label_smoothing, val_size, precision
        self.device, self.seed, self.progress = device, seed, progress

    def get_config(self) -> ScratchConfig:
        """The effective hyperparameters: `config` with the overrides applied, validated."""
        base = self.config if self.config is not None else ScratchConfig()
        overrides = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(ScratchConfig)
            if getattr(self, f.name) is not None
        }
        config = dataclasses.replace(base, **overrides)
        check_config(config)
        return config

    def fit(self, X, y, X_val=None, y_val=None) -> ScratchClassifier:
        """Train from scratch, keeping the weights with the best validation accuracy.

        Args:
            X: uint8 images (N, S, S, 3) or greyscale (N, S, S) with S = image_size, already
                preprocessed as the column's input is (resized and centre-cropped; the model
                never resizes); or float32 (N, 3, S, S) already normalised.
            y: N class labels.
            X_val: Images to validate on, as X; when None, `val_size` of X is split off.
            y_val: Labels of X_val.

        Returns:
            self.
        """
        start = time.perf_counter()
        cfg = self.get_config()
        device = resolve_device(cfg.device)
        dtype = _autocast_dtype(cfg.precision, device)
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither of them.")
        # Cheap checks of shapes and labels first, before any tensor is built.
        X = check_images(X, cfg.image_size)
        y = check_labels(y, len(X), "X", "y")
        classes, y_idx = np.unique(y, return_inverse=True)
        if X_val is not None:
            X_val = check_images(X_val, cfg.image_size)
            y_val = check_labels(y_val, len(X_val), "X_val", "y_val")
            unseen = np.setdiff1d(y_val, classes)
            if len(unseen):
                raise ValueError(f"y_val has labels not seen in y: {unseen[:10].tolist()}.")
        X, y_idx = _to_tensor(X, cfg.image_size), torch.as_tensor(y_idx, dtype=torch.long)
        if X_val is not None:
            X_tr, y_tr, X_va = X, y_idx, _to_tensor(X_val, cfg.image_size)
            y_va = torch.as_tensor(np.searchsorted(classes, y_val), dtype=torch.long)
        elif cfg.val_size > 0:
            tr, va = split(y_idx.numpy(), cfg.val_size, cfg.seed)
            X_tr, y_tr, X_va, y_va = X[tr], y_idx[tr], X[va], y_idx[va]
        else:
            X_tr, y_tr, X_va, y_va = X, y_idx, None, None

        # Seed a private generator and fork the global RNG: fitting never disturbs the caller's
        # random state, and the same seed gives the same model.
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = SmallCNN(cfg, len(classes))
        # channels_last lets oneDNN (CPU) and cuDNN pick NHWC convolution kernels: a training
        # step took 26 ms instead of 30 ms in float32 on the 2-core AMD EPYC this was tuned on.
        model = model.to(device, memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # fp16 (auto on a GPU without bf16) needs loss scaling against underflowing gradients.
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

        history, best_key, best_state, best_epoch, stale = [], None, None, None, 0
        bar = tqdm(range(cfg.epochs), desc="scratch", unit="epoch", disable=not cfg.progress)
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(len(X_tr), generator=gen)
            # Summed on the device and read once an epoch: .item() per step would sync CUDA.
            loss_sum = correct = torch.zeros((), device=device)
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                xb = augment(X_tr[idx], gen) if cfg.augment else X_tr[idx]
                xb = xb.to(device).contiguous(memory_format=torch.channels_last)
                yb = y_tr[idx].to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum = loss_sum + loss.detach() * len(idx)
                correct = correct + (logits.argmax(1) == yb).sum()
            row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / len(X_tr)}
            row |= {"train_acc": correct.item() / len(X_tr), "val_loss": None, "val_acc": None}
            if X_va is not None:
                logits = _logits(model, X_va, device, dtype)
                row["val_loss"] = F.cross_entropy(logits, y_va).item()
                row["val_acc"] = (logits.argmax(1) == y_va).float().mean().item()
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                acc=f"{row['train_acc']:.3f}",
                val_acc="-" if X_va is None else f"{row['val_acc']:.3f}",
            )

            if X_va is None or cfg.patience == 0:
                continue  # no early stopping: the last weights are kept
            # Small validation sets tie often on accuracy; the lower loss breaks ties.
            key = (row["val_acc"], -row["val_loss"])
            if best_key is None or key > best_key:
                best_key, stale, best_epoch = key, 0, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        # Learned attributes are set only now, so a fit that raises leaves no half-fitted state.
        self.config_, self.classes_, self.model_ = cfg, classes, model.eval()
        self.history_, self.best_epoch_ = history, best_epoch or len(history)
        self.n_params_ = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n, n_classes), columns ordered as `classes_`."""
        check_is_fitted(self)
        cfg = self.config_  # as fitted, even if set_params changed the params since
        device = next(self.model_.parameters()).device
        logits = _logits(
            self.model_,
            _to_tensor(X, cfg.image_size),
            device,
            _autocast_dtype(cfg.precision, device),
        )
        return torch.softmax(logits, dim=1).double().numpy()

    def predict(self, X) -> np.ndarray:
        """The most probable class of each image, as labels from `classes_`."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The learned state as plain arrays: `classes` and `state.<name>` weights (float32).

        Store them with `np.savez` beside `dataclasses.asdict(clf.get_config())` as JSON, and
        load with `from_arrays`; no pickle involved. The training history is not included.
        """
        check_is_fitted(self)
        state = self.model_.state_dict()
        arrays = {f"state.{k}": v.detach().float().cpu().numpy() for k, v in state.items()}
        return {"classes": np.asarray(self.classes_), **arrays}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], params: Mapping[str, object]
    ) -> ScratchClassifier:
        """Rebuild a fitted classifier from `to_arrays()` and its config fields.

        Args:
            arrays: As returned by `to_arrays` (an open `np.load` npz file works too).
            params: `ScratchConfig` fields, e.g. `dataclasses.asdict(clf.get_config())`
                after a JSON round trip (lists become tuples again).

        Returns:
            A fitted `ScratchClassifier` that predicts exactly as the saved one did.
        """
        names = {f.name for f in dataclasses.fields(ScratchConfig)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(
                f"Unknown ScratchConfig fields {unknown}; expected some of {sorted(names)}."
            )
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        clf = cls(ScratchConfig(**fields))
        cfg = clf.config_ = clf.get_config()
        if "classes" not in arrays:
            raise ValueError("The arrays have no 'classes' entry; pass the dict from to_arrays().")
        clf.classes_ = np.asarray(arrays["classes"])
        model = SmallCNN(cfg, len(clf.classes_))
        state = {
            k[6:]: torch.from_numpy(np.asarray(arrays[k])) for k in arrays if k[:6] == "state."
        }
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"The arrays do not match the network the params describe: {err}"
            ) from err
        device = resolve_device(cfg.device)
        clf.model_ = model.to(device, memory_format=torch.channels_last).eval()
        clf.n_params_ = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return clf

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Images, not feature tables: scikit-learn's 2-D estimator checks do not apply.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags


@torch.inference_mode()
def _logits(model: nn.Module, X: torch.Tensor, device: torch.device, dtype) -> torch.Tensor:
    """float32 logits on the CPU, computed in batches in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(X), _PREDICT_BATCH):
        xb = X[i : i + _PREDICT_BATCH].to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(out)
