"""save/load: identical outputs after a round trip, atomic writes, no pickled code."""
import os
import sys

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery import harden, load, save
from surgery.files import atomic_save


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_zoo_model_round_trip_gives_identical_outputs(tmp_path):
    model = surgery.create_model("linearity", arch="resnet18")
    hardened = harden(model, position=["features.6", "features.7"], input_size=(3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    path = tmp_path / "model.pt"
    save(hardened, path)
    loaded = load(path)
    assert type(loaded) is type(hardened)
    assert sorted(surgery.robust_blocks(loaded)) == ["features.6", "features.7"]
    assert torch.equal(outputs(loaded, x), outputs(hardened, x))


def test_any_model_round_trips_with_its_architecture(tmp_path):
    hardened = harden(torchvision.models.resnet18(), ortho="aoc", input_size=(3, 64, 64))
    path = tmp_path / "resnet.pt"
    save(hardened, path)
    with pytest.raises(ValueError, match="pass model="):
        load(path)
    loaded = load(path, model=torchvision.models.resnet18())
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(outputs(loaded, x), outputs(hardened, x))


def test_unhardened_model_round_trips(tmp_path):
    model = surgery.create_model("timm-iqa", backbone="resnet18")
    save(model, tmp_path / "plain.pt")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(outputs(load(tmp_path / "plain.pt"), x), outputs(model, x))


def test_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "surgery.model.v1", "payload": os.system}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load(path)


@pytest.mark.parametrize(
    "content,error,match",
    [
        (b"not a torch file", ValueError, "weights-only"),
        (None, FileNotFoundError, "no saved model"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, content, error, match):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        load(path)


def test_foreign_torch_file_is_rejected(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not written by surgery.save"):
        load(tmp_path / "other.pt")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"a": torch.ones(1)}, path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(1)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


# name -> (kwargs, input size), small sizes: the zoo models that prune (DBCNN is refused,
# test_prune.py; TReS's transformer does not survive torch-pruning: CHANGELOG, Known issues)
ZOO = {
    "default": ({}, (3, 64, 64)),
    "linearity": ({"arch": "resnet18"}, (3, 64, 64)),
    "koncept512": ({}, (3, 96, 96)),
    "timm-iqa": ({"backbone": "efficientnet_lite0"}, (3, 64, 64)),
}


def first_output(model, x):
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("method", ["l2", "pls"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "koncept512" else n for n in sorted(ZOO)])
def test_pruned_zoo_model_round_trips_output_for_output(name, method, tmp_path):
    kwargs, size = ZOO[name]
    model = surgery.create_model(name, pretrained=name == "default", **kwargs)
    if name == "default":
        assert isinstance(model.backbone.blocks[1][0].bn1, torch.nn.modules.batchnorm.BatchNorm2d)
    calib = torch.rand(12, *size)
    hardened = harden(model, prune=method, calib=calib, input_size=size).eval()
    report = hardened.surgery_config.pruning[0]
    assert report.method == method and report.resized
    path = tmp_path / "pruned.pt"
    save(hardened, path)
    loaded = load(path).eval()
    x = torch.rand(2, *size)
    assert torch.equal(first_output(loaded, x), first_output(hardened, x))
    assert [type(m) for m in loaded.modules()] == [type(m) for m in hardened.modules()]
    assert str(loaded) == str(hardened)  # same layers, widths and activations
    assert getattr(loaded, "score_range", None) == getattr(hardened, "score_range", None)


def test_default_model_keeps_its_score_range_and_activations(tmp_path):
    model = surgery.create_model("default", pretrained=True)
    assert model.score_range != (0.0, 1.0)
    save(model, tmp_path / "default.pt")
    loaded = load(tmp_path / "default.pt")
    assert loaded.score_range == pytest.approx(model.score_range)


def test_pruned_plain_model_round_trips(tmp_path):
    model = torchvision.models.resnet18().eval()
    surgery.prune(model, "l2", 0.1, input_size=(3, 32, 32))
    save(model, tmp_path / "pruned.pt")
    loaded = load(tmp_path / "pruned.pt", model=torchvision.models.resnet18()).eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def test_loading_never_imports_what_a_file_names(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "surgery_test_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\nLayer = torch.nn.Conv2d\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    hardened = harden(torchvision.models.resnet18(), input_size=(3, 32, 32))
    config = hardened.surgery_config.to_dict()
    config["blocks"]["layer4"]["ortho"] = "surgery_test_evil.Layer"
    atomic_save(
        {"format": "surgery.model.v2", "model": None, "harden": config, "score_range": None, "state_dict": {}},
        tmp_path / "evil.pt",
    )
    with pytest.raises(ValueError, match="never imports"):
        load(tmp_path / "evil.pt", model=torchvision.models.resnet18())
    assert not marker.exists() and "surgery_test_evil" not in sys.modules


class PlainConv(nn.Conv2d):
    """An unregistered 'orthogonal' layer, trusted by the caller."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def test_unregistered_layer_loads_when_the_caller_passes_it(tmp_path):
    hardened = harden(torchvision.models.resnet18(), ortho=PlainConv, input_size=(3, 32, 32)).eval()
    save(hardened, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="layers=\\[TheClass\\]"):
        load(tmp_path / "m.pt", model=torchvision.models.resnet18())
    loaded = load(tmp_path / "m.pt", model=torchvision.models.resnet18(), layers=[PlainConv]).eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(outputs(loaded, x), outputs(hardened, x))


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save({"a": torch.ones(1)}, tmp_path / "shared.pt")
        assert (tmp_path / "shared.pt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_paper_code_block_round_trips_frozen(tmp_path):
    model = surgery.create_model("default")
    hardened = harden(model, input_size=(3, 192, 256), **surgery.PAPER_CODE_BLOCK).eval()
    block = surgery.robust_blocks(hardened)["backbone.blocks.6"]
    assert block.config.hidden_channels == round(192 * 200 / 1024) and block.config.freeze
    assert "max pool -> paper" in surgery.describe(hardened, measure=False)
    save(hardened, tmp_path / "paper.pt")
    loaded = load(tmp_path / "paper.pt").eval()
    x = torch.rand(2, 3, 192, 256)
    assert torch.equal(outputs(loaded, x), outputs(hardened, x))
    assert not any(p.requires_grad for p in surgery.robust_blocks(loaded)["backbone.blocks.6"].parameters())
