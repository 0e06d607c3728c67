"""Column variants: richer vectors from the same network, named ``NAME:VARIANT``.

- ``NAME:stages``: the global average of every stage's (block group's) output, concatenated with
  the column's final pooled vector, which stays the last ``dim`` values. Lower stages keep
  textures and edges that the last layer drops, which can matter for data far from ImageNet; a
  linear head on all of them is the Head2Toe idea (Evci et al. 2022,
  https://arxiv.org/abs/2201.03529; issue 15). EfficientNet-Lite0 gives
  16+24+40+80+112+192+320 + 1280 = 2,064 values.
- ``NAME:flip``: the vector averaged over the image and its mirror image (twice the compute).
- ``NAME:full``: the full image: the short side is resized to the input size itself, so the centre
  crop trims only the long side (timm's ``crop_pct=1.0``). ImageNet's 87.5% centre crop assumes a
  centred object in a cluttered frame; for small, tightly framed images (28x28 garments, 300x300
  solar cells) it cuts away part of the object. Same network, other pixels.
- Several joined by ``+`` (any order, named in the order above): ``NAME:stages+flip``,
  ``NAME:flip+full``, ``NAME:stages+flip+full``.

A variant is a column of its own: its name is in the cache identity (another file, another column
key, so a head trained on one never reads the other), and its model is a plain ``nn.Module`` from
normalised image tensors to ``(B, D)`` float vectors, so the extractor, the Ray engine and the
OpenVINO conversion run it unchanged. The stages are tapped with the libraries' own tools: timm's
``forward_intermediates`` for timm models (the offline EfficientNet-Lite columns and ``timm/``),
torchvision's ``create_feature_extractor`` (torch.fx) for ``tv/`` models and for a builder that
names its stage modules in a ``colhead_stages`` attribute (the ``tiny`` column).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect

from ._registry import ColumnSpec, get_column, register_variants

# The options a variant name may join with "+", in the order of its canonical name; ``colhead
# columns`` lists each under every column (any '+' join of them parses too).
OPTIONS = ("stages", "flip", "full")
_HOW = {
    "stages": "the global average of every stage's output, then the final vector",
    "flip": "averaged over the image and its mirror image",
    "full": "the full image (short side resized to the input size, no 87.5% centre crop)",
}
_SHORT = {
    "stages": "every stage pooled + the final vector",
    "flip": "mirror-averaged",
    "full": "full image, not centre-cropped",
}
_STAGES = (
    "timm forward_intermediates, for EfficientNet every block group blocks.0..N; torchvision "
    "layer1-4, RegNet trunk blocks or features[1:] less the head conv; or the builder's "
    "colhead_stages"
)


def parse_variant(suffix: str) -> tuple[str, ...] | None:
    """The options of a variant suffix in canonical order ("flip+stages" -> stages, flip); None
    when ``suffix`` is not made of variant options."""
    given = suffix.split("+")
    if not all(g in OPTIONS for g in given) or len(set(given)) != len(given):
        return None
    return tuple(o for o in OPTIONS if o in given)


def resolve_variant(name: str) -> ColumnSpec | None:
    """The spec of ``NAME:VARIANT``; None when ``name`` is not a variant (e.g. ``tv/A:WEIGHTS``).

    Raises:
        ValueError: the suffix names no variant, or a variant of a variant was asked for.
    """
    base, sep, suffix = name.rpartition(":")
    if not sep or not base:
        return None
    options = parse_variant(suffix)
    if options is None:
        # torchvision weights are upper-case enum names (tv/resnet50:IMAGENET1K_V2): leave those
        # to the tv/ family, which lists the weights; anything else after ':' meant a variant
        if base.startswith("tv/") and ":" not in base and suffix == suffix.upper():
            return None
        close = [difflib.get_close_matches(t, OPTIONS, n=1) or [t] for t in suffix.split("+")]
        guess = "+".join(c[0] for c in close)
        hint = f" Did you mean {base}:{guess}?" if parse_variant(guess) else ""
        raise ValueError(
            f"Unknown column variant {suffix!r} in {name!r}.{hint} Valid variants: "
            f"{', '.join(OPTIONS)}, or several joined by '+' (e.g. {base}:stages+flip); see "
            "`colhead columns`."
        )
    if parse_variant(base.rpartition(":")[2]) is not None:
        raise ValueError(
            f"Column {name!r} stacks two variants; join the options with '+' after one ':', "
            f"e.g. {base.rpartition(':')[0]}:stages+flip."
        )
    return variant_spec(get_column(base), "+".join(options))


def variant_spec(spec: ColumnSpec, variant: str) -> ColumnSpec:
    """``spec`` turned into its ``variant``: same weights, another model and/or another crop."""
    options = parse_variant(variant)
    if options is None:
        raise ValueError(f"{variant!r} is not a column variant; options: {', '.join(OPTIONS)}")
    stages, flip, full = (o in options for o in OPTIONS)

    def build(weights_file=None):
        model, path, sha = spec.build(weights_file)
        if not (stages or flip):  # :full changes the pixels only, never the network
            return model, path, sha
        return wrap(model, stages=stages, flip=flip), path, sha

    pre = spec.preprocess
    if full:
        pre = dataclasses.replace(pre, resize=pre.crop)
    return dataclasses.replace(
        spec,
        name=f"{spec.name}:{variant}",
        dim=spec.dim if not stages else None,  # the stage widths are known once built
        preprocess=pre,
        build=build,
        source=f"{spec.name}, {', '.join(_SHORT[o] for o in options)}",
        description=f"{spec.description} ({spec.source}); {variant}: "
        + "; ".join(_HOW[o] for o in options)
        + (f" (stages: {_STAGES})" if stages else ""),
    )


def wrap(model, *, stages: bool, flip: bool):
    """The column ``model`` as a variant: a plain ``nn.Module`` giving ``(B, D)`` float vectors.

    Raises:
        ValueError: ``stages`` was asked of a model whose stages colhead cannot find.
    """
    taps = _taps(model) if stages else _Plain()(model)
    return _Variant()(taps, flip)


def _taps(model):
    """A module returning ``(final vector, [stage maps])`` for ``model``, and the stage names."""
    declared = getattr(model, "colhead_stages", None)
    if declared:
        return _FxTaps()(model, list(declared))
    if hasattr(model, "forward_intermediates") and hasattr(model, "forward_head"):
        return _TimmTaps()(model)
    return _FxTaps()(model, _torchvision_stages(model))


def _torchvision_stages(model) -> list[str]:
    from torch import nn

    kids = dict(model.named_children())
    if all(f"layer{i}" in kids for i in (1, 2, 3, 4)):  # ResNet, ResNeXt, Wide ResNet
        return ["layer1", "layer2", "layer3", "layer4"]
    if isinstance(kids.get("trunk_output"), nn.Sequential):  # RegNet
        return [f"trunk_output.{n}" for n, _ in kids["trunk_output"].named_children()]
    feats = kids.get("features")
    if isinstance(feats, nn.Sequential) and "Swin" not in type(model).__name__:  # NHWC maps
        from torchvision.ops.misc import Conv2dNormActivation

        named = list(feats.named_children())
        dense = [f"features.{n}" for n, _ in named if n.startswith("denseblock")]
        if dense:  # DenseNet
            return dense
        # EfficientNet, MobileNet: [0] is the stem and a last 1x1 conv feeds the final vector;
        # ConvNeXt: stages and downsampling layers. A flat list of layers (VGG) has no stages.
        picked = [(n, m) for n, m in named[1:] if not isinstance(m, Conv2dNormActivation)]
        if picked and all(len(list(m.children())) > 0 for _, m in picked):
            return [f"features.{n}" for n, _ in picked]
    raise ValueError(
        f"colhead cannot find the stages of a {type(model).__name__}: ':stages' works for timm "
        "models and torchvision ResNet, RegNet, EfficientNet, MobileNet, ConvNeXt and DenseNet "
        "families. Use the column without ':stages', or ':flip'."
    )


def _pool(t):
    """A stage's output as one vector per image: global average over the spatial positions."""
    if t.ndim == 4:  # (B, C, H, W)
        return t.mean((2, 3))
    if t.ndim == 3:  # (B, tokens, C)
        return t.mean(1)
    return t.flatten(1)


# The modules below need torch, which colhead imports only when a column is built: each class is
# made on first use (and then kept), so `import colhead` stays light.
_CLASSES: dict[str, type] = {}


def _cls(name: str, make) -> type:
    if name not in _CLASSES:
        _CLASSES[name] = make()
    return _CLASSES[name]


def _Variant():
    def make():
        import torch
        from torch import nn

        class ColumnVariant(nn.Module):
            """Stage vectors and the final vector, concatenated; mirrored and averaged if flip."""

            def __init__(self, taps, flip: bool):
                super().__init__()
                self.taps, self.flip = taps, flip
                self.stage_names = list(taps.stage_names)

            def _one(self, x):
                final, maps = self.taps(x)
                return torch.cat([_pool(m).to(final.dtype) for m in maps] + [final], 1)

            def forward(self, x):
                v = self._one(x)
                if self.flip:  # the crop is centred, so its mirror is the mirror image's crop
                    v = (v + self._one(torch.flip(x, dims=[3]))) * 0.5
                return v

        return ColumnVariant

    return _cls("ColumnVariant", make)


def _Plain():
    def make():
        from torch import nn

        class PlainTaps(nn.Module):
            stage_names: tuple = ()

            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model(x), []

        return PlainTaps

    return _cls("PlainTaps", make)


def _TimmTaps():
    def make():
        from torch import nn

        class TimmTaps(nn.Module):
            """timm's forward_intermediates: every stage, then the usual head (pre-logits)."""

            def __init__(self, model):
                super().__init__()
                self.model = model
                params = inspect.signature(model.forward_intermediates).parameters
                blocks = getattr(model, "blocks", None)
                if "extra_blocks" in params and blocks is not None:
                    # EfficientNet/MobileNet: index i is blocks[i-1]; timm's default takes only
                    # the 5 feature_info levels, the Head2Toe features are every block group
                    self.kwargs = {"indices": list(range(1, len(blocks) + 1)), "extra_blocks": True}
                    self.stage_names = [f"blocks.{i}" for i in range(len(blocks))]
                else:
                    self.kwargs = {"indices": None}
                    self.stage_names = [f"intermediate.{i}" for i in range(len(model.feature_info))]

            def forward(self, x):
                final, maps = self.model.forward_intermediates(x, **self.kwargs)
                return self.model.forward_head(final, pre_logits=True), maps

        return TimmTaps

    return _cls("TimmTaps", make)


def _FxTaps():
    def make():
        from torch import nn
        from torchvision.models.feature_extraction import (
            create_feature_extractor,
            get_graph_node_names,
        )

        class FxTaps(nn.Module):
            """torch.fx: the named modules' outputs and the model's output, in one pass."""

            def __init__(self, model, stage_names: list[str]):
                super().__init__()
                last = get_graph_node_names(model)[1][-1]  # the node the model returns
                nodes = {n: f"stage{i}" for i, n in enumerate(stage_names)}
                nodes[last] = "final"
                self.fx = create_feature_extractor(model, return_nodes=nodes)
                self.stage_names = stage_names

            def forward(self, x):
                out = self.fx(x)
                return out["final"], [out[f"stage{i}"] for i in range(len(self.stage_names))]

        return FxTaps

    return _cls("FxTaps", make)


register_variants(
    resolve_variant,
    "variants NAME:stages, NAME:flip, NAME:full and their '+' joins (every stage pooled + final; "
    "mirror-averaged; the full image, not centre-cropped)",
    OPTIONS,
)
