"""Image folders and score tables, on small files the tests write."""
import numpy as np
import pytest
import torch
from PIL import Image

from surgery.data import ImageFolder, load_image


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    Image.fromarray(rng.integers(0, 255, (10, 14), dtype=np.uint8)).save(tmp_path / "gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scores.csv").write_text("name,mos\nimg0.png,1.5\nimg2.png,3\ngray.jpg,2\n")
    return tmp_path


def test_load_image_range_shape_and_resize(folder):
    image = load_image(folder / "img0.png")
    assert image.shape == (3, 10, 14) and image.min() >= 0 and image.max() <= 1
    assert load_image(folder / "gray.jpg", size=(8, 8)).shape == (3, 8, 8)


def test_folder_lists_images_only(folder):
    dataset = ImageFolder(folder, size=(8, 8))
    assert dataset.names == ["gray.jpg", "img0.png", "img1.png", "img2.png"]
    assert dataset[0].shape == (3, 8, 8)


def test_csv_gives_scores(folder):
    dataset = ImageFolder(folder, folder / "scores.csv", image_column="name", score_column="mos", size=(8, 8))
    images, scores = dataset.tensors()
    assert images.shape == (3, 3, 8, 8) and torch.equal(scores, torch.tensor([1.5, 3.0, 2.0]))
    image, score = dataset[1]
    assert score.item() == 3.0


def test_bad_files_are_named_or_skipped(folder):
    (folder / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.png.*corrupt"):
        load_image(folder / "broken.png")
    with pytest.warns(UserWarning, match="broken.png"):
        dataset = ImageFolder(folder, size=(8, 8), skip_bad=True)
    assert "broken.png" not in dataset.names and len(dataset) == 4


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"root": "missing-folder"}, FileNotFoundError, "missing-folder"),
        ({"csv_path": "nope.csv"}, FileNotFoundError, "nope.csv"),
        ({"csv_path": "scores.csv", "image_column": "file"}, ValueError, "no column"),
    ],
)
def test_missing_paths_and_columns(folder, kwargs, error, match):
    kwargs = dict(kwargs)
    root = folder / kwargs.pop("root") if "root" in kwargs else folder
    if "csv_path" in kwargs:
        kwargs["csv_path"] = folder / kwargs["csv_path"]
    with pytest.raises(error, match=match):
        ImageFolder(root, **kwargs)
