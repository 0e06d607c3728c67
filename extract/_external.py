"""Open-ended columns from torchvision (``tv/NAME[:WEIGHTS]``) and timm (``timm/NAME``).

These download their weights when online, exactly as the libraries do. Offline they load a local
file: ``--weights FILE``, or the file torchvision/huggingface already cached. Without either they
fail fast with an error naming the columns that do work offline. Set ``COLHEAD_OFFLINE=1`` (or
``HF_HUB_OFFLINE=1``) to never try the network: huggingface_hub otherwise retries for ~50 s.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._columns import load_state_file, sha256_file, sha256_state
from ._registry import (
    ColumnSpec,
    ColumnUnavailableError,
    Preprocess,
    offline_columns,
    register_prefix,
)


def _offline() -> bool:
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("COLHEAD_OFFLINE", "HF_HUB_OFFLINE")
    )


def _unavailable(name: str, why: str) -> ColumnUnavailableError:
    return ColumnUnavailableError(
        f"Column {name} cannot load its weights: {why}. Pass a local file with --weights FILE, "
        f"or use a column that works offline: {', '.join(offline_columns())}."
    )


def _strip_head(model):
    """Replace the last Linear layer with Identity; return its input size (the feature dim)."""
    from torch import nn

    last = None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, child_name, child)
    if last is None:
        raise ValueError("Could not find a final Linear layer to remove from this model.")
    parent, child_name, child = last
    setattr(parent, child_name, nn.Identity())
    return child.in_features


def torchvision_spec(name: str) -> ColumnSpec:
    import torchvision
    from torchvision.transforms import InterpolationMode

    arch, _, wname = name[3:].partition(":")
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"Unknown torchvision classification model {arch!r}; see "
            "torchvision.models.list_models(module=torchvision.models)."
        )
    enum = torchvision.models.get_model_weights(arch)
    try:
        weights = enum[wname] if wname else enum.DEFAULT
    except KeyError:
        raise ValueError(
            f"{arch} has no weights {wname!r}; available: {', '.join(w.name for w in enum)}."
        ) from None
    t = weights.transforms()
    interp = {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.BICUBIC: "bicubic"}.get(
        t.interpolation, "bilinear"
    )
    pre = Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), interp)
    cached = Path(_hub_dir(), "checkpoints", os.path.basename(weights.url))

    def build(weights_file=None):
        model = torchvision.models.get_model(arch, weights=None)
        if weights_file:
            path = Path(weights_file)
        elif cached.is_file():
            path = cached
        elif _offline():
            raise _unavailable(name, f"it is not in the torch hub cache ({cached})")
        else:
            try:  # downloads into the torch hub cache, as torchvision would
                weights.get_state_dict(progress=True)
            except OSError as e:  # URLError is an OSError
                raise _unavailable(name, f"download failed ({e})") from None
            path = cached
        model.load_state_dict(load_state_file(path))
        _strip_head(model)
        return model, path, sha256_file(path)

    return ColumnSpec(
        name=name,
        dim=None,
        preprocess=pre,
        build=build,
        available=cached.is_file,
        source=f"torchvision {arch} {weights}",
        licence="see torchvision model docs",
        weights_id=str(weights),
        description=f"torchvision {arch}",
    )


def _hub_dir() -> str:
    import torch

    return torch.hub.get_dir()


def timm_spec(name: str) -> ColumnSpec:
    import timm

    model_name = name[5:]
    arch = model_name.split(".")[0]
    if not timm.is_model(arch):
        raise ValueError(f"Unknown timm model {model_name!r}; see timm.list_models().")
    cfg = timm.get_pretrained_cfg(model_name) or timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875) or 0.875)
    pre = Preprocess(
        int(round(size / crop_pct)),
        size,
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        cfg.get("interpolation", "bicubic")
        if cfg.get("interpolation") != "bilinear"
        else "bilinear",
    )

    def build(weights_file=None):
        if weights_file:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
            state = load_state_file(weights_file)
            state = {k: v for k, v in state.items() if not _is_classifier_key(model, k)}
            # Strict but for the classifier we dropped: strict=False once ran a timm column with
            # 70 of 70 keys missing, i.e. random weights, without a word (issue 13).
            result = model.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ValueError(
                    f"{weights_file} does not hold the weights of timm model {model_name}: "
                    f"{len(result.missing_keys)} of its keys are missing (e.g. "
                    f"{result.missing_keys[:3]}) and {len(result.unexpected_keys)} are "
                    f"unexpected (e.g. {result.unexpected_keys[:3]}). Pass the checkpoint of "
                    "this exact model, or name the column it belongs to."
                )
            return model, Path(weights_file), sha256_file(weights_file)
        if _offline():
            # huggingface_hub read HF_HUB_OFFLINE when timm imported it: set the live constant
            # too, or it retries the network for ~50 s (the CLI sets the variable at start).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as e:  # huggingface_hub raises many types; all mean "no weights here"
            raise _unavailable(name, f"{type(e).__name__}: {str(e)[:200]}") from None
        path = _hf_cached_file(model)
        return model, path, sha256_file(path) if path else _state_hash(model)

    return ColumnSpec(
        name=name,
        dim=None,
        preprocess=pre,
        build=build,
        available=lambda: False,
        source=f"timm {model_name}" + (f" (hf: {cfg.get('hf_hub_id')})" if cfg else ""),
        licence=str(cfg.get("license", "see the model card")),
        weights_id=model_name,
        description=f"timm {model_name}",
    )


def _is_classifier_key(model, key: str) -> bool:
    clf = model.default_cfg.get("classifier", "")
    names = clf if isinstance(clf, (list, tuple)) else [clf]
    return any(n and key.startswith(n + ".") for n in names)


def _hf_cached_file(model):
    try:
        from huggingface_hub import try_to_load_from_cache

        hub_id = model.pretrained_cfg.get("hf_hub_id")
        for fname in ("model.safetensors", "pytorch_model.bin"):
            p = try_to_load_from_cache(hub_id, fname)
            if isinstance(p, str):
                return Path(p)
    except Exception:
        pass
    return None


def _state_hash(model) -> str:
    return sha256_state(model.state_dict())


register_prefix("tv/", torchvision_spec, "any torchvision model as 'tv/NAME'")
register_prefix("timm/", timm_spec, "any timm model as 'timm/NAME'")
