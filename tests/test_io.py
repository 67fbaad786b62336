"""save/load: identical outputs after a round trip, atomic writes, no pickled code."""
import os

import pytest
import torch
import torchvision

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
