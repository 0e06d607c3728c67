"""The two rows a frozen column is judged against: ``finetune`` and ``scratch-column`` (issue 15).

- ``finetune``: the pretrained column unfrozen, a linear layer on its vector, trained end to end
  for a few epochs on the labelled images: the upper reference, what the column could give if
  the frozen-vector shortcut were not taken (it costs a full backward pass per image).
- ``scratch-column``: the same architecture with every parameter re-initialised, trained the
  same way: what the architecture gives without pretraining (the scratch CNN is a smaller net).

Both see the raw images with the column's own preprocessing (uint8 at its crop size). The
network comes from the column registry (built here, in compare, because heads never import
extract); the loop is a compact one of our own rather than ``heads/_scratch.py``'s, since that
estimator is bound to its own SmallCNN and 64 px input.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("finetune", "scratch-column")


@dataclass
class ColumnTrainConfig:
    """How ``finetune`` and ``scratch-column`` train (one config, two starting points)."""

    epochs: int = 3  # passes over the labelled images ("a few": the column already knows a lot)
    min_steps: int = 30  # at least this many optimiser steps: 1 label x 4 classes is 1 batch
    batch_size: int = 32
    lr: float = 1e-4  # the column's parameters (pretrained: small steps keep what it knows)
    head_lr: float = 1e-3  # the new linear layer
    scratch_lr: float = 1e-3  # every parameter of scratch-column (random weights need larger)
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    device: str = "auto"
    precision: str = "auto"  # colhead._device.resolve_precision: bf16 autocast where it pays
    seed: int = 0

    def summary(self, method: str) -> str:
        lr = (
            f"AdamW lr {self.lr:g} (column) / {self.head_lr:g} (linear layer), BatchNorm "
            "statistics frozen"
        )
        if method == "scratch-column":
            lr = (
                "every parameter re-initialised (PyTorch's reset_parameters), AdamW lr "
                f"{self.scratch_lr:g}"
            )
        return (
            f"{lr}; {self.epochs} epochs (at least {self.min_steps} steps), batch "
            f"{self.batch_size}, cosine schedule, label smoothing {self.label_smoothing:g}, the "
            "last weights kept (no early stopping), the column's preprocessing, no augmentation"
        )


class ColumnClassifier:
    """The column's network + a linear layer, trained end to end; scikit-learn's fit/predict.

    Args:
        build: ``() -> nn.Module`` giving ``(B, D)`` vectors from normalised ``(B, 3, S, S)``.
        mean, std, size: the column's normalisation and input side (its preprocessing).
        pretrained: keep the built weights (finetune) or re-initialise them (scratch-column).
        config: training settings.
    """

    def __init__(self, build, *, mean, std, size: int, pretrained: bool = True, config=None):
        self.build, self.mean, self.std, self.size = build, mean, std, size
        self.pretrained, self.config = pretrained, config or ColumnTrainConfig()

    def _model(self, n_classes: int):
        import torch
        from torch import nn

        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            body = self.build()
            if not self.pretrained:
                # another seed than any the column was built with (tiny is seed 0 itself)
                torch.manual_seed(cfg.seed + 10_007)
                for m in body.modules():  # the architecture, none of the learned values
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            body = body.float()
            with torch.no_grad():
                dim = body.eval()(torch.zeros(1, 3, self.size, self.size)).shape[1]
            head = nn.Linear(dim, n_classes)
        return nn.Sequential(body, head)

    def _tensor(self, X, idx):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(X[idx])).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    def fit(self, X, y):
        """Train on uint8 images ``(N, S, S, 3)`` (the column's preprocessing) and labels."""
        import torch
        import torch.nn.functional as F

        from .._device import autocast_dtype, resolve_device, resolve_precision

        X = np.asarray(X)
        if X.dtype != np.uint8 or X.ndim != 4 or X.shape[-1] != 3:
            raise ValueError(
                f"Expected uint8 images (N, S, S, 3) preprocessed as the column's input, got "
                f"{X.dtype} of shape {X.shape}."
            )
        start = time.perf_counter()
        cfg = self.config
        self.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
        device = resolve_device(cfg.device)
        dtype = autocast_dtype(resolve_precision(cfg.precision, device))
        model = self._model(len(self.classes_)).to(device)
        body, head = model[0], model[1]
        if self.pretrained:
            groups = [
                {"params": body.parameters(), "lr": cfg.lr},
                {"params": head.parameters(), "lr": cfg.head_lr},
            ]
        else:
            groups = [{"params": model.parameters(), "lr": cfg.scratch_lr}]
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(len(X) / cfg.batch_size)
        steps = max(cfg.epochs * per_epoch, cfg.min_steps)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        gen = torch.Generator().manual_seed(cfg.seed)
        y_t = torch.as_tensor(y_idx, dtype=torch.long)
        self.history_, step = [], 0
        while step < steps:
            model.train()
            if self.pretrained:  # few-shot batches would wreck the learned BatchNorm statistics
                for m in body.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()
            order = torch.randperm(len(X), generator=gen)
            for i in range(0, len(order), cfg.batch_size):
                if step >= steps:
                    break
                idx = order[i : i + cfg.batch_size]
                xb, yb = self._tensor(X, idx.numpy()).to(device), y_t[idx].to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                self.history_.append(float(loss.detach()))
        self.model_, self.device_, self.dtype_ = model.eval(), device, dtype
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def predict_proba(self, X) -> np.ndarray:
        import torch

        if not hasattr(self, "model_"):
            raise RuntimeError("This ColumnClassifier is not fitted yet; call fit first.")
        X, out = np.asarray(X), []
        with torch.inference_mode():
            for i in range(0, len(X), 64):
                xb = self._tensor(X, np.arange(i, min(i + 64, len(X)))).to(self.device_)
                with torch.autocast(
                    self.device_.type, dtype=self.dtype_, enabled=self.dtype_ is not None
                ):
                    out.append(torch.softmax(self.model_(xb).float(), 1).cpu())
        return torch.cat(out).double().numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]

    def describe(self) -> dict:
        return {"pretrained": self.pretrained, **asdict(self.config)}


def column_methods(names, column: str, preprocess: dict, *, config: ColumnTrainConfig):
    """``Method``s for the requested rows of ``METHODS``, on ``column``'s network as registered
    (a ``:stages`` variant trains its stage taps and final vector together)."""
    from .. import extract as ex
    from ..heads import Method

    spec = ex.get_column(column)

    def build():
        return spec.build(None)[0]

    out = []
    for name in names:
        pretrained = name == "finetune"
        out.append(
            Method(
                name,
                lambda per_class, p=pretrained: ColumnClassifier(
                    build,
                    mean=preprocess["mean"],
                    std=preprocess["std"],
                    size=preprocess["crop"],
                    pretrained=p,
                    config=config,
                ),  # fmt: skip
                "column_images",
            )
        )
    return out
