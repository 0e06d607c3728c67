"""MLP head: one hidden layer in torch behind the scikit-learn estimator API (as skorch does).

Inputs are standardised with the training mean and std, the network is
Linear-ReLU-Dropout-Linear trained with AdamW, and training stops early on the validation loss,
keeping the weights of the best epoch.
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
import torch
from scipy.special import softmax
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .._device import resolve_device
from ._base import POSITIVE_INT, POSITIVE_REAL, VAL_SIZE, HeadBase
from ._logreg import LogRegHead
from ._validation import check_val, validation_split


def _network(n_features: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


class MLPHead(HeadBase):
    """Standardise, then Linear-ReLU-Dropout-Linear with AdamW and early stopping.

    Training is deterministic for an integer ``random_state`` on CPU (weight init, dropout and
    batch order come from seeded generators; the global torch RNG is left as it was).

    Args:
        hidden: Width of the hidden layer.
        dropout: Dropout probability after the hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        batch_size: Training and inference batch size.
        max_epochs: Upper bound on training epochs.
        patience: Epochs without a better validation loss before stopping.
        val_size: Fraction (float) or number (int) of training rows held out for early stopping
            when ``fit`` gets no explicit ``X_val``/``y_val``.
        fallback_below: When the smallest class has fewer training rows than this, fit the
            linear probe (``LogRegHead`` on CL2N features, C by cross-validation, or C=1 at one
            row per class) instead: a hidden layer cannot be trained and early-stopped on a
            handful of images (issue 15). None never falls back.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]".
        random_state: Seed of the split, the initialisation, dropout and shuffling.

    Attributes:
        classes_: Class labels, sorted.
        mean_, std_: Standardisation statistics of the training rows, float32.
        module_: The trained ``torch.nn.Sequential`` (best epoch), in eval mode on ``device_``.
        device_: The torch device used.
        best_epoch_: 1-based epoch whose weights were kept.
        n_epochs_: Epochs actually run.
        loss_curve_, val_loss_curve_: Mean training and validation cross-entropy per epoch.
        fallback_: None, or the fitted ``LogRegHead`` used instead of the network (then
            the network's attributes are absent).
    """

    _parameter_constraints = {
        "hidden": [POSITIVE_INT],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "lr": [POSITIVE_REAL],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [POSITIVE_INT],
        "max_epochs": [POSITIVE_INT],
        "patience": [POSITIVE_INT],
        "val_size": VAL_SIZE,
        "fallback_below": [POSITIVE_INT, None],
        "device": [str],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        hidden=512,
        dropout=0.2,
        lr=1e-3,
        weight_decay=1e-2,
        batch_size=256,
        max_epochs=100,
        patience=10,
        val_size=0.1,
        fallback_below=None,
        device="auto",
        random_state=0,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_size = val_size
        self.fallback_below = fallback_below
        self.device = device
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None) -> MLPHead:
        """Train with early stopping on a validation set.

        Args:
            X: Training features, shape (n_samples, n_features).
            y: Class labels, shape (n_samples,).
            X_val: Optional validation features for early stopping; without them a seeded
                stratified ``val_size`` split of ``X`` is used.
            y_val: Labels of ``X_val``.

        Returns:
            self.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        if X_val is not None or y_val is not None:
            X_val, y_val = check_val(self, X_val, y_val)
            X_val = X_val.astype(np.float32, copy=False)
            classes = np.unique(np.concatenate([y, y_val]))
        else:
            classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(
                "MLPHead needs samples of at least 2 classes; got one class, "
                f"{classes.tolist()[0]!r}."
            )
        if self.fallback_below is not None and np.unique(y, return_counts=True)[1].min() < (
            self.fallback_below
        ):
            return self._fit_fallback(X, y, X_val, y_val)
        self.fallback_ = None
        if X_val is None:
            X, X_val, y, y_val = validation_split(
                X, y, val_size=self.val_size, random_state=self.random_state, who="MLPHead"
            )
        self.classes_ = classes
        device = resolve_device(self.device)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

        # Statistics in float64 so large feature values do not lose precision in the sums.
        self.mean_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = X.std(axis=0, dtype=np.float64)
        self.std_ = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        train = self._tensors(X, y, device)
        val = self._tensors(X_val, y_val, device)

        # fork_rng restores the global RNG afterwards, so fitting a head has no side effects.
        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            module = _network(X.shape[1], self.hidden, len(classes), self.dropout).to(device)
            self._train(module, train, val, torch.Generator().manual_seed(seed))
        self.module_ = module.eval()
        self.device_ = device
        return self

    def _fallback_head(self, per_class: int) -> LogRegHead:
        """The linear probe the MLP falls back to: the protocol's logreg for this many labels."""
        if per_class >= 2:
            return LogRegHead(cv=5, normalize="cl2n", random_state=self.random_state)
        return LogRegHead(C=1.0, normalize="cl2n", random_state=self.random_state)

    def _fit_fallback(self, X, y, X_val, y_val) -> MLPHead:
        per_class = int(np.unique(y, return_counts=True)[1].min())
        head = self._fallback_head(per_class)
        if X_val is not None:
            head.set_params(cv=None).fit(X, y, X_val=X_val, y_val=y_val)
        else:
            head.fit(X, y)
        self.classes_, self.fallback_ = head.classes_, head
        for name in ("module_", "device_", "mean_", "std_", "best_epoch_", "n_epochs_"):
            self.__dict__.pop(name, None)  # a refit must not leave an older network behind
        return self

    def _fitted_settings(self) -> dict:
        if self.fallback_ is not None:
            return {"fallback_": "logreg", **self.fallback_.describe()}
        return {"fallback_": None, "best_epoch_": self.best_epoch_, "n_epochs_": self.n_epochs_}

    def _tensors(self, X, y, device) -> tuple[torch.Tensor, torch.Tensor]:
        Z = torch.from_numpy(np.ascontiguousarray((X - self.mean_) / self.std_, dtype=np.float32))
        codes = torch.from_numpy(np.searchsorted(self.classes_, y).astype(np.int64))
        return Z.to(device), codes.to(device)

    def _train(self, module: nn.Module, train, val, generator: torch.Generator) -> None:
        X, y = train
        optimiser = torch.optim.AdamW(
            module.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        loss_fn = nn.CrossEntropyLoss()
        best_loss, best_state, since_best = np.inf, None, 0
        self.loss_curve_, self.val_loss_curve_ = [], []
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            order = torch.randperm(len(X), generator=generator).to(X.device)
            total = torch.zeros((), device=X.device)  # summed on the device: no sync per batch
            for start in range(0, len(X), self.batch_size):
                batch = order[start : start + self.batch_size]
                loss = loss_fn(module(X[batch]), y[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.detach() * len(batch)
            self.loss_curve_.append(total.item() / len(X))

            module.eval()
            with torch.inference_mode():
                val_loss = loss_fn(self._forward(module, val[0]), val[1]).item()
            self.val_loss_curve_.append(val_loss)
            # Early stopping on the loss rather than accuracy: on small validation sets accuracy
            # moves in coarse steps and plateaus, the loss still ranks epochs.
            if val_loss < best_loss:
                best_loss, since_best, self.best_epoch_ = val_loss, 0, epoch
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        self.n_epochs_ = epoch
        module.load_state_dict(best_state)

    def _forward(self, module: nn.Module, Z: torch.Tensor) -> torch.Tensor:
        """Logits in batches moved to the module's device one at a time, so device memory does
        not grow with the number of rows."""
        device = next(module.parameters()).device
        parts = [
            module(Z[s : s + self.batch_size].to(device)) for s in range(0, len(Z), self.batch_size)
        ]
        return torch.cat(parts)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns ordered as ``classes_``."""
        check_is_fitted(self)
        if self.fallback_ is not None:
            validate_data(self, X, reset=False, dtype=np.float32)  # the MLP's own feature checks
            return self.fallback_.predict_proba(X)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        Z = torch.from_numpy(np.ascontiguousarray((X - self.mean_) / self.std_, dtype=np.float32))
        with torch.inference_mode():
            logits = self._forward(self.module_, Z).cpu().numpy()
        # Softmax in float64 so each row sums to 1 to double precision.
        return softmax(logits.astype(np.float64), axis=1)

    # Serialisation hooks for heads._io: learned arrays only, never pickled objects.
    def _export_state(self) -> dict[str, np.ndarray]:
        if self.fallback_ is not None:
            return {f"fallback.{k}": v for k, v in self.fallback_._export_state().items()}
        state = {f"module.{k}": v.cpu().numpy() for k, v in self.module_.state_dict().items()}
        curves = {"loss_curve": self.loss_curve_, "val_loss_curve": self.val_loss_curve_}
        return {
            "mean": self.mean_,
            "std": self.std_,
            "epochs": np.asarray([self.best_epoch_, self.n_epochs_], dtype=np.int64),
            **{k: np.asarray(v, dtype=np.float64) for k, v in curves.items()},
            **state,
        }

    def _import_state(self, state: dict[str, np.ndarray]) -> None:
        if any(k.startswith("fallback.") for k in state):
            inner = {k.removeprefix("fallback."): v for k, v in state.items()}
            swept = len(inner.get("val_scores", ())) > 0  # C was chosen by CV, not fixed
            head = self._fallback_head(2 if swept else 1)
            head.classes_, head.n_features_in_ = self.classes_, self.n_features_in_
            head._import_state(inner)
            self.fallback_ = head
            return
        self.fallback_ = None
        self.mean_ = state["mean"].astype(np.float32)
        self.std_ = state["std"].astype(np.float32)
        self.best_epoch_, self.n_epochs_ = (int(v) for v in state["epochs"])
        self.loss_curve_ = state["loss_curve"].tolist()
        self.val_loss_curve_ = state["val_loss_curve"].tolist()
        weights = {
            k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")
        }
        hidden, n_features = weights["0.weight"].shape
        if hidden != self.hidden or n_features != self.n_features_in_:
            raise ValueError(
                f"The saved MLP weights have shape {(hidden, n_features)}, which does not match "
                f"hidden={self.hidden} and n_features_in_={self.n_features_in_}."
            )
        module = _network(n_features, hidden, len(self.classes_), self.dropout)
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        try:
            self.device_ = resolve_device(self.device)
        except RuntimeError:
            # A head trained with device="cuda" must still load on a CPU-only machine.
            warnings.warn(
                f"The MLP head was saved with device={self.device!r}, but CUDA is not available "
                "here; loading it on the CPU instead.",
                stacklevel=3,
            )
            self.device_ = torch.device("cpu")
        self.module_ = module.to(self.device_).eval()
