"""The from-scratch CNN baseline on small real data (scikit-learn's 8x8 digits), CPU only.

The digits go through the column's own preprocessing (extract's ``from_array``, the one resize
implementation, issue 10) to 16 px, as ``compare`` prepares images for the scratch model.
"""

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split

from colhead.extract import Preprocess, from_array
from colhead.heads._scratch import ScratchClassifier, ScratchConfig, SmallCNN

# Digits are not mirror-symmetric (a flipped 2 is not a 2): augmentation stays off (the default,
# pinned here); 16 px keeps an epoch well under a second on 2 cores.
FAST = {"image_size": 16, "augment": False, "device": "cpu"}


def preprocess(images: np.ndarray, size: int = 16) -> np.ndarray:
    """Greyscale (N, H, W) -> uint8 (N, size, size) through the column's preprocessing."""
    pre = Preprocess(size, size, (0.0,) * 3, (1.0,) * 3, "bilinear")
    return np.stack([from_array(im, pre)[..., 0] for im in images])


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = np.round(d.images * (255 / 16)).astype(np.uint8)  # 0..16 -> uint8 greyscale (N, 8, 8)
    X = preprocess(X)  # (N, 16, 16): the scratch model never resizes
    return train_test_split(X, d.target, test_size=0.3, random_state=0, stratify=d.target)


@pytest.fixture(scope="module")
def fitted(digits):
    X_tr, _, y_tr, _ = digits
    return ScratchClassifier(epochs=8, **FAST).fit(X_tr, y_tr)


def test_learns_digits(fitted, digits):
    _, X_te, _, y_te = digits
    # 8 epochs reach ~0.90-0.97 held-out (0.1 is chance); 0.85 leaves margin for bf16/CPU noise.
    assert (fitted.predict(X_te) == y_te).mean() > 0.85
    assert len(fitted.history_) <= 8 and 1 <= fitted.best_epoch_ <= len(fitted.history_)
    assert set(fitted.history_[0]) >= {"train_loss", "train_acc", "val_acc", "seconds"}
    assert fitted.history_[fitted.best_epoch_ - 1]["val_acc"] == max(
        h["val_acc"] for h in fitted.history_
    )
    assert fitted.n_params_ == sum(p.numel() for p in fitted.model_.parameters())
    assert fitted.fit_seconds_ > 0


def test_predict_proba(fitted, digits):
    X_te = digits[1][:50]
    proba = fitted.predict_proba(X_te)
    assert proba.shape == (50, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(fitted.predict(X_te), fitted.classes_[proba.argmax(axis=1)])


def test_greyscale_rgb_and_float_input_agree(fitted, digits):
    grey = digits[1][:40]
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (N, H, W, 3)
    np.testing.assert_array_equal(fitted.predict_proba(grey), fitted.predict_proba(rgb))
    # Float input skips the resize: feed the same normalised tensor fit would have built.
    from colhead.heads._scratch import _to_tensor

    as_float = _to_tensor(rgb, 16).numpy()
    np.testing.assert_allclose(fitted.predict_proba(as_float), fitted.predict_proba(rgb))


def test_string_labels_explicit_validation_set_bf16_and_progress(digits, capsys):
    X_tr, X_te, y_tr, y_te = digits
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    # bf16 autocast runs on any CPU (emulated without native support), so this path is tested.
    clf = ScratchClassifier(epochs=2, precision="bf16", progress=True, **FAST)
    clf.fit(X_tr[:300], names[y_tr[:300]], X_te, names[y_te])
    assert list(clf.classes_) == sorted(names)
    assert set(clf.predict(X_te[:5])) <= set(names)
    assert all(h["val_acc"] is not None for h in clf.history_)
    assert "val_acc" in capsys.readouterr().err  # the tqdm bar's postfix


def test_same_seed_same_model_on_cpu_fp32(digits):
    X_tr, X_te, y_tr, _ = digits
    clf = ScratchClassifier(epochs=2, precision="fp32", augment=True, image_size=16, seed=3)
    a, b = clf.fit(X_tr[:400], y_tr[:400]), clone(clf).fit(X_tr[:400], y_tr[:400])
    np.testing.assert_array_equal(a.predict_proba(X_te), b.predict_proba(X_te))
    assert [h["train_loss"] for h in a.history_] == [h["train_loss"] for h in b.history_]


def test_workshop_preset_has_19302_parameters():
    cfg = ScratchConfig.workshop()
    assert (cfg.channels, cfg.groups, cfg.epochs, cfg.patience) == ((8, 16, 32), (2, 4, 8), 50, 0)
    model = SmallCNN(cfg, n_classes=102)
    assert sum(p.numel() for p in model.parameters()) == 19_302  # docs/workshop.md's figure
    # Adaptive pooling: the count does not depend on the image size.
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 102)


def test_clone_and_overrides():
    clf = ScratchClassifier(ScratchConfig.workshop(), image_size=32, lr=3e-3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    cfg = twin.get_config()
    assert (cfg.channels, cfg.image_size, cfg.lr) == ((8, 16, 32), 32, 3e-3)
    assert ScratchClassifier().set_params(epochs=3).get_config().epochs == 3
    with pytest.raises(NotFittedError):
        twin.predict(np.zeros((1, 8, 8), np.uint8))


def test_every_config_field_is_a_constructor_parameter():
    params = set(inspect.signature(ScratchClassifier).parameters) - {"config"}
    assert params == {f.name for f in dataclasses.fields(ScratchConfig)}


def test_arrays_round_trip_through_npz_and_json(fitted, digits, tmp_path):
    np.savez(tmp_path / "w.npz", **fitted.to_arrays())
    (tmp_path / "p.json").write_text(json.dumps(dataclasses.asdict(fitted.get_config())))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as arrays:
        params = json.loads((tmp_path / "p.json").read_text())
        loaded = ScratchClassifier.from_arrays(arrays, params)
    X_te = digits[1]
    np.testing.assert_array_equal(loaded.predict_proba(X_te), fitted.predict_proba(X_te))
    np.testing.assert_array_equal(loaded.classes_, fitted.classes_)
    with pytest.raises(ValueError, match="Unknown ScratchConfig fields"):
        ScratchClassifier.from_arrays(fitted.to_arrays(), {"width": 3})
    with pytest.raises(ValueError, match="do not match the network"):
        ScratchClassifier.from_arrays(fitted.to_arrays(), {"channels": [8, 16, 32]})


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((4, 8), np.uint8), [0, 1, 0, 1], "shape"),  # 2-D: not a batch of images
        (np.zeros((4, 16, 16, 2), np.uint8), [0, 1, 0, 1], r"\(N, H, W, 3\)"),
        (np.zeros((4, 3, 8, 8), np.float32), [0, 1, 0, 1], r"\(N, 3, 16, 16\)"),
        (np.zeros((4, 16, 16), np.int64), [0, 1, 0, 1], "uint8 or float"),
        (np.zeros((4, 16, 16), np.uint8), [0, 1, 0], "4 images but y has 3 labels"),
        (np.zeros((4, 16, 16), np.uint8), [[0], [1], [0], [1]], "must be 1-D"),
        # Not resized here: images must come at image_size from the column's preprocessing.
        (np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1], r"16x16 pixels \(image_size\), got 8x8"),
    ],
)
def test_bad_input_raises(X, y, match):
    with pytest.raises(ValueError, match=match):
        ScratchClassifier(epochs=1, **FAST).fit(X, y)


def test_bad_config_and_validation_arguments_raise(digits):
    X = digits[0][:20]
    y = digits[2][:20]
    with pytest.raises(ValueError, match="divisible by groups"):
        ScratchClassifier(groups=(3, 8, 16)).get_config()
    with pytest.raises(ValueError, match="precision must be"):
        ScratchClassifier(precision="fp16").fit(X, y)
    with pytest.raises(ValueError, match="both X_val and y_val"):
        ScratchClassifier(epochs=1, **FAST).fit(X, y, X_val=X)
    with pytest.raises(ValueError, match="labels not seen in y"):
        ScratchClassifier(epochs=1, **FAST).fit(X, y % 2, X, y)
