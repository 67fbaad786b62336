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


def test_16_bit_png_keeps_its_full_range(tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # really stored with 16 bits
    image = load_image(tmp_path / "deep.png")
    assert image.mean().item() == pytest.approx(0.5, abs=1e-3)
    assert image[0, 0, 0] == 0 and image[0, 0, -1] == 1


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    Image.fromarray(array).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "turned.jpg")
    assert image.shape == (3, 20, 10)  # upright: portrait
    assert image[:, :10].mean() > 0.9 and image[:, 10:].mean() < 0.1  # the white half is on top


def test_csv_with_a_byte_order_mark(folder):
    (folder / "bom.csv").write_text("name,mos\nimg0.png,1.5\n", encoding="utf-8-sig")
    dataset = ImageFolder(folder, folder / "bom.csv", image_column="name", score_column="mos", size=(8, 8))
    assert dataset.names == ["img0.png"] and dataset.targets == [1.5]


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


# --------------------------------------------------------------------------- KonIQ / NIPS
import os  # noqa: E402

from surgery.data import NIPS2017, KonIQ10k, SyntheticIQA, distort, koniq_split  # noqa: E402

KONIQ_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n"


@pytest.fixture
def koniq(tmp_path):
    rng = np.random.default_rng(1)
    lines = [KONIQ_HEADER]
    sets = ["training"] * 6 + ["validation", "test", "test", "training"]
    for i, split in enumerate(sets):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        lines.append(f"{i}.jpg,0.0,0.1,0.3,0.5,0.1,100,{50 + i}.5,0.5,{split}\n")
    (tmp_path / "koniq.csv").write_text("".join(lines))
    return tmp_path


def test_koniq_official_and_paper_splits(koniq):
    names, mos = koniq_split(koniq / "koniq.csv", "train")
    assert len(names) == 7 and mos[0] == 50.5
    assert koniq_split(koniq / "koniq.csv", "test")[0] == ["7.jpg", "8.jpg"]
    paper = [koniq_split(koniq / "koniq.csv", s, mode="paper", seed=3)[0] for s in ("train", "val", "test")]
    assert [len(p) for p in paper] == [7, 1, 2] and len(set(sum(paper, []))) == 10
    dataset = KonIQ10k(koniq, koniq / "koniq.csv", "val", size=(8, 10))
    image, score = dataset[0]
    assert image.shape == (3, 8, 10) and score.item() == 56.5


def test_koniq_feeds_evaluate_directly(koniq):
    from surgery import evaluate, metrics
    from surgery.attacks import scores
    from tests.models import TinyIQA

    torch.manual_seed(0)
    model = TinyIQA().eval()
    dataset = KonIQ10k(koniq, koniq / "koniq.csv", "all", size=(8, 10))
    table = evaluate(model, dataset, attacks="pgd-1", eps_grid=(4 / 255,), batch_size=3, progress=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert table.summaries[0]["srocc"] == pytest.approx(metrics.srocc(scores(model, images), dataset.mos))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda d: koniq_split(d / "none.csv"), FileNotFoundError, "none.csv"),
        (lambda d: koniq_split(d / "koniq.csv", "holdout"), ValueError, "split must be"),
        (lambda d: KonIQ10k(d / "missing", d / "koniq.csv"), FileNotFoundError, "image folder"),
    ],
)
def test_koniq_errors(koniq, call, error, match):
    with pytest.raises(error, match=match):
        call(koniq)


def test_koniq_rejects_other_tables(tmp_path):
    (tmp_path / "other.csv").write_text("name,score\na.png,1\n")
    with pytest.raises(ValueError, match="not the KonIQ-10k table"):
        koniq_split(tmp_path / "other.csv")


def test_nips_reads_table_and_images(tmp_path):
    os.makedirs(tmp_path / "images")
    rows = ["ImageId,URL,License,Author\n"]
    for name in ("aa", "bb"):
        Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
        rows.append(f"{name},http://example.invalid/{name},CC-BY,someone\n")
    (tmp_path / "images.csv").write_text("".join(rows))
    dataset = NIPS2017(tmp_path, size=(16, 16))
    assert len(dataset) == 2 and dataset[1].shape == (3, 16, 16) and "CC-BY" in dataset.attribution(0)
    with pytest.raises(ValueError, match="not in"):
        NIPS2017(tmp_path, ids=["zz"])
    with pytest.raises(FileNotFoundError, match="images.csv"):
        NIPS2017(tmp_path / "images")


def test_nips_reads_a_lossless_copy_in_another_format(tmp_path):
    os.makedirs(tmp_path / "images")
    pixels = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "aa.webp", lossless=True)
    (tmp_path / "images.csv").write_text("ImageId,URL,License,Author\naa,http://example.invalid/aa,CC-BY,someone\n")
    image = NIPS2017(tmp_path, size=(20, 20))[0]
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    Image.fromarray(pixels).save(tmp_path / "images" / "aa.png")
    with pytest.raises(ValueError, match="two files"):
        NIPS2017(tmp_path)


# --------------------------------------------------------------------------- synthetic pseudo-MOS
@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg", "contrast"])
def test_distortions_get_stronger_with_level(kind):
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32) * 0.5 + torch.linspace(0, 0.5, 32)
    errors = [(distort(image, kind, level) - image).abs().mean().item() for level in range(1, 6)]
    assert errors == sorted(errors) and errors[0] > 0
    assert torch.equal(distort(image, kind, 3, seed=1), distort(image, kind, 3, seed=1))


def test_synthetic_set_labels_split_and_cache(tmp_path):
    torch.manual_seed(0)
    references = torch.rand(5, 3, 32, 32)
    dataset = SyntheticIQA(references, metric="gmsd", distortions=("blur", "noise"), levels=3, cache=tmp_path / "labels.pt")
    assert len(dataset) == 5 * (1 + 2 * 3)
    pristine, label = dataset[0]
    assert torch.equal(pristine, references[0]) and label.item() == pytest.approx(1.0, abs=1e-4)
    blur = [dataset.labels[1 + i].item() for i in range(3)]
    assert blur == sorted(blur, reverse=True)  # stronger blur, lower pseudo-MOS
    train, val, test = dataset.split((0.6, 0.2, 0.2), seed=0)
    refs = [{dataset.reference_of(i) for i in s.indices} for s in (train, val, test)]
    assert refs[0].isdisjoint(refs[1]) and refs[0].isdisjoint(refs[2]) and len(refs[0]) == 3
    again = SyntheticIQA(references, metric="gmsd", distortions=("blur", "noise"), levels=3, cache=tmp_path / "labels.pt")
    assert torch.equal(again.labels, dataset.labels)
    with pytest.raises(ValueError, match="unknown pseudo-MOS"):
        SyntheticIQA(references, metric="psnr")
