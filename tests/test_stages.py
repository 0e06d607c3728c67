"""Column variants NAME:stages / :flip / :full and joins (issue 15): widths, slices, crops, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from colhead.cache import column_key, config_key, open_cache
from colhead.cli import main
from colhead.extract import Embedder, get_column
from colhead.extract._stages import wrap
from conftest import photo

LITE0_STAGES = (16, 24, 40, 80, 112, 192, 320)  # EfficientNet-Lite0's seven block groups


def _images(n: int, size: int) -> np.ndarray:
    """n real (decoded, centre-cropped) images as the column sees them."""
    return np.stack([np.asarray(photo(i, size=(size, size), cls=i)) for i in range(n)])


@pytest.fixture(scope="module")
def tiny():
    plain = Embedder("tiny", backend="torch", precision="fp32")
    stages = Embedder("tiny:stages", backend="torch", precision="fp32")
    return plain, stages, _images(4, 32)


def test_tiny_stages_are_every_block_pooled_then_the_final_vector(tiny):
    plain, stages, x = tiny
    v, p = stages.forward(x), plain.forward(x)
    assert stages.dim == v.shape[1] == 16 + 32 + 32 and stages.model.stage_names == ["1", "3"]
    assert np.array_equal(v[:, -32:], p)  # the final slice is the plain column's vector
    # stage 1 is the mean of the first block's map; tiny's last block pooled IS its final vector
    import torch

    t = (torch.as_tensor(x).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    with torch.inference_mode():
        first = plain.model[:2](t).mean((2, 3)).numpy()
    np.testing.assert_allclose(v[:, :16], first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v[:, 16:48], p, rtol=1e-5, atol=1e-6)


def test_lite0_stages_give_2064_dims_and_the_plain_vector_last():
    x = _images(4, 224)
    plain = Embedder("efficientnet_lite0", backend="torch", precision="fp32")
    stages = Embedder("efficientnet_lite0:stages", backend="torch", precision="fp32")
    v = stages.forward(x)
    assert v.shape == (4, sum(LITE0_STAGES) + 1280) == (4, 2064)
    assert stages.model.stage_names == [f"blocks.{i}" for i in range(7)]
    np.testing.assert_allclose(v[:, -1280:], plain.forward(x), rtol=1e-5, atol=1e-5)
    assert np.abs(v[:, :16]).sum() > 0  # the first stage's slice is not padding


def test_flip_averages_the_image_and_its_mirror(tiny):
    plain, _, x = tiny
    flip = Embedder("tiny:flip", backend="torch", precision="fp32")
    both = Embedder("tiny:stages+flip", backend="torch", precision="fp32")
    want = (plain.forward(x) + plain.forward(np.ascontiguousarray(x[:, :, ::-1]))) / 2
    np.testing.assert_allclose(flip.forward(x), want, rtol=1e-5, atol=1e-6)
    assert flip.dim == 32 and both.dim == 80
    np.testing.assert_allclose(both.forward(x)[:, -32:], want, rtol=1e-5, atol=1e-6)


def test_full_keeps_the_whole_short_side_and_the_same_network(tiny):
    plain = tiny[0]
    full = Embedder("tiny:full", backend="torch", precision="fp32")
    assert get_column("tiny").preprocess.resize == 36  # tiny crops 32 of 36
    assert full.spec.preprocess.resize == full.spec.preprocess.crop == 32
    assert full.model is not None and type(full.model) is type(plain.model)  # no wrapper
    # a 48x48 photo: the plain column sees its centre 32/36, :full sees all of it
    img = np.asarray(photo(7, size=(48, 48), cls=3))
    a, b = plain.preprocess(img), full.preprocess(img)
    assert a.shape == b.shape == (32, 32, 3) and not np.array_equal(a, b)
    from PIL import Image

    whole = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(b, whole)
    np.testing.assert_array_equal(full.forward(b[None]), plain.forward(b[None]))
    # options join in any order, under one canonical name and identity
    spec = get_column("tiny:full+stages+flip")
    assert spec.name == "tiny:stages+flip+full" and spec.preprocess.resize == 32
    assert "full image" in spec.description and "stage" in spec.description
    assert column_key(full.identity) != column_key(plain.identity)


def test_a_variant_is_another_cache_identity(tiny):
    plain, stages, _ = tiny
    assert stages.identity["column"] == "tiny:stages"
    assert stages.identity["weights_sha256"] == plain.identity["weights_sha256"]
    assert column_key(stages.identity) != column_key(plain.identity)
    assert config_key(stages.identity) != config_key(plain.identity)
    assert "stages" in get_column("tiny:stages").description


def test_extract_cli_with_a_stages_column_end_to_end(image_folder, tmp_path, capsys, monkeypatch):
    # a fresh cache folder: OpenVINO (backend auto) keeps converted columns there, and one
    # converted by an earlier run would hide what the wrapper computes now
    monkeypatch.setenv("COLHEAD_CACHE", str(tmp_path / "cache"))
    outs = {}
    for column in ("tiny", "tiny:stages"):
        out = tmp_path / f"{column.replace(':', '_')}.h5"
        argv = ["extract", "--column", column, "--data", f"folder:{image_folder}"]
        argv += ["--precision", "fp32"]
        assert main([*argv, "--out", str(out), "--no-progress", "--workers", "0"]) == 0
        outs[column] = open_cache(out)
    plain, stages = outs["tiny"], outs["tiny:stages"]
    assert stages.dim == 80 and len(stages) == len(plain) == 12
    assert stages.identity["column"] == "tiny:stages" and stages.config_key != plain.config_key
    assert list(stages.ids) == list(plain.ids)
    # the backend may be OpenVINO (auto): same vectors within fp32 tolerance
    np.testing.assert_allclose(stages.features[:, -32:], plain.features, rtol=1e-4, atol=1e-5)
    assert main(["columns"]) == 0
    listed = capsys.readouterr().out
    assert "tiny:stages" in listed and "efficientnet_lite0:full" in listed
    assert "joined" not in listed and "e.g. efficientnet_lite0:stages+full" in listed


def test_unknown_or_stacked_variants_are_clear_errors():
    with pytest.raises(
        ValueError, match=r"Unknown column variant 'foo'.*stages, flip, full, or several joined"
    ):
        get_column("tiny:foo")
    with pytest.raises(ValueError, match="Unknown column variant 'flip\\+flip'"):
        get_column("tiny:flip+flip")
    with pytest.raises(ValueError, match=r"Did you mean tiny:stages\+full\?"):
        get_column("tiny:stage+ful")
    with pytest.raises(ValueError, match="Unknown column variant 'bar'"):
        get_column("timm/resnet18:bar")
    with pytest.raises(
        ValueError, match=r"stacks two variants.*join the options.*tiny:stages\+flip"
    ):
        get_column("tiny:stages:flip")
    with pytest.raises(ValueError, match="Unknown column 'nope'"):
        get_column("nope:stages")
    # a torchvision weights name is not a variant; a variant of it is
    assert get_column("tv/resnet18:IMAGENET1K_V1").name == "tv/resnet18:IMAGENET1K_V1"
    assert get_column("tv/resnet18:IMAGENET1K_V1:stages").dim is None


def test_torchvision_and_timm_models_are_tapped_with_their_libraries():
    import timm
    import torch
    import torchvision

    from colhead.extract._external import _strip_head

    x = torch.randn(2, 3, 64, 64)
    for arch, widths in [("resnet18", (64, 128, 256, 512)), ("mobilenet_v3_small", None)]:
        model = torchvision.models.get_model(arch, weights=None).eval()
        dim = _strip_head(model)
        w = wrap(model, stages=True, flip=False).eval()
        with torch.inference_mode():
            v, p = w(x), model(x)
        assert torch.equal(v[:, -dim:], p)
        if widths:
            assert v.shape[1] == sum(widths) + dim
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    w = wrap(model, stages=True, flip=False).eval()
    with torch.inference_mode():
        assert torch.equal(w(x)[:, -512:], model(x))
    with pytest.raises(ValueError, match="cannot find the stages of a Sequential"):
        wrap(torch.nn.Sequential(torch.nn.Flatten()), stages=True, flip=False)


def test_openvino_converts_a_stages_column(tmp_path, tiny):
    pytest.importorskip("openvino")
    _, stages, x = tiny
    ov = Embedder("tiny:stages", backend="openvino", precision="fp32", cache_dir=tmp_path)
    assert ov.backend == "openvino" and ov.dim == 80
    np.testing.assert_allclose(ov.forward(x), stages.forward(x), rtol=1e-4, atol=1e-5)
