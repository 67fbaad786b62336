"""evaluate at dataset scale: Datasets and DataLoaders stream batch by batch (images of any
size), and under torchrun the ranks share the batches and return one process's table."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import surgery
from surgery import evaluate
from surgery.attacks import UAP, scores
from surgery.batches import ImageStream
from tests.models import TinyIQA

ATTACKS = ["pgd-2", "pgd-2-rs", "uap", "square-5"]
EPS = (2 / 255, 6 / 255)


def toy_data(count: int = 10, size: int = 12):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 3, size, size, generator=generator), torch.linspace(1, 5, count)


def tiny_model() -> TinyIQA:
    torch.manual_seed(0)
    return TinyIQA().eval()


class Pairs(Dataset):
    """(image, score) items read one at a time, counting how many are alive at once."""

    def __init__(self, images, mos, sizes=None):
        self.images, self.mos, self.sizes = images, mos, sizes

    def __len__(self):
        return len(self.mos)

    def __getitem__(self, index):
        image = self.images[index]
        if self.sizes is not None:
            image = image[:, : self.sizes[index], : self.sizes[index]]
        return image.clone(), float(self.mos[index])


def _equal_tables(a, b):
    assert json.loads(a.to_json()) == json.loads(b.to_json())


def sharded_table(cache=None):
    images, mos = toy_data()
    return evaluate(
        tiny_model(), images, mos, ATTACKS, eps_grid=EPS, direction="both", attack_subset=[0, 2, 3, 5, 6, 7, 9],
        batch_size=2, cache=cache, progress=False,
    )


@pytest.mark.parametrize("wrap", ["dataset", "dataloader", "tensor-dataset"])
def test_a_dataset_gives_the_tensor_table(wrap):
    images, mos = toy_data()
    expected = evaluate(tiny_model(), images, mos, ATTACKS, eps_grid=EPS, attack_subset=[1, 4, 5, 8], batch_size=3, progress=False)
    data = {
        "dataset": Pairs(images, mos),
        "dataloader": DataLoader(Pairs(images, mos), batch_size=3, num_workers=1),
        "tensor-dataset": TensorDataset(images, mos),
    }[wrap]
    table = evaluate(tiny_model(), data, attacks=ATTACKS, eps_grid=EPS, attack_subset=[1, 4, 5, 8], batch_size=3, progress=False)
    _equal_tables(table, expected)


def test_images_of_different_sizes_are_batched_by_size():
    images, mos = toy_data(6, 16)
    sizes = [16, 16, 12, 12, 12, 16]
    data = Pairs(images, mos, sizes)
    stream = ImageStream(data, batch_size=4)
    shapes = [(b.indices.tolist(), tuple(b.images.shape[-2:])) for b in stream.batches()]
    assert shapes == [([0, 1], (16, 16)), ([2, 3], (12, 12)), ([4], (12, 12)), ([5], (16, 16))]
    model = tiny_model()
    table = evaluate(model, data, attacks=["pgd-1"], eps_grid=(4 / 255,), batch_size=4, progress=False)
    one_by_one = torch.cat([scores(model, data[i][0][None]) for i in range(6)])
    assert table.rows[0]["mean_score"] == pytest.approx(float(one_by_one.mean()), rel=1e-6)
    assert table.rows[0]["srocc"] is not None and table.rows[1]["n"] == 6


def test_scores_come_from_the_dataset_or_mos_not_both():
    images, mos = toy_data(4)
    with pytest.raises(ValueError, match="carry their own scores and mos= was given"):
        evaluate(tiny_model(), Pairs(images, mos), mos, attacks=[], progress=False)
    unlabelled = [images[0], images[1]]

    class Mixed(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return (images[i], 3.0) if i == 0 else unlabelled[i]

    with pytest.raises(ValueError, match=r"item\(s\) \[1\] of the dataset have no score"):
        evaluate(tiny_model(), Mixed(), attacks=[], progress=False)


def test_bad_items_are_named():
    images, _ = toy_data(3)

    class Bad(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return images[i] * (2 if i == 2 else 1)

    with pytest.raises(ValueError, match=r"image\(s\) \[2\]"):
        evaluate(tiny_model(), Bad(), attacks=[], progress=False)
    with pytest.raises(TypeError, match="map-style Dataset"):
        evaluate(tiny_model(), [images[0]], attacks=[], progress=False)


def test_the_uap_fits_on_streamed_images_as_on_a_tensor():
    images, _ = toy_data(6)
    model = tiny_model()
    from_tensor = UAP(iterations=2, size=(12, 12)).fit(model, images, batch_size=4)
    from_stream = UAP(iterations=2, size=(12, 12)).fit(model, ImageStream(images, 4).images())
    assert torch.equal(from_tensor, from_stream)


def test_msu_range_is_the_clean_scores_of_the_evaluated_images():
    images, mos = toy_data(6)
    model = tiny_model()
    model.score_range = (-10.0, 10.0)
    table = evaluate(model, images, mos, "pgd-1", eps_grid=(4 / 255,), score_range="evaluated", progress=False)
    clean = scores(model, images)
    assert table.summaries[0]["score_range"] == f"{float(clean.min()):.4g}..{float(clean.max()):.4g} (evaluated images)"
    assert table.summaries[0]["pgd-1 srocc@4"] == table.rows[1]["srocc"]


def test_a_cache_is_matched_image_by_image(tmp_path):
    images, mos = toy_data(6)
    model = tiny_model()
    options = {"eps_grid": (4 / 255,), "batch_size": 2, "cache": tmp_path, "progress": False}
    first = evaluate(model, images, mos, "pgd-1", attack_subset=[0, 1, 2], **options)
    _equal_tables(first, evaluate(model, images, mos, "pgd-1", attack_subset=[0, 1, 2], **options))
    with pytest.raises(ValueError, match="holds scores of other images"):
        evaluate(model, images, mos, "pgd-1", attack_subset=[3, 1, 2], **options)


def test_torchrun_ranks_share_the_work_and_return_one_process_table(tmp_path, monkeypatch):
    script = os.path.join(os.path.dirname(__file__), "torchrun_evaluate.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    expected = json.loads(sharded_table().to_json())
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [expected, expected]
    cached = sorted(os.listdir(next((tmp_path / "cache" / "model").iterdir())))
    assert cached and all(".rank0.pt" in name or ".rank1.pt" in name for name in cached)
    # one process resumes from the ranks' files without attacking again
    fresh = sharded_table()

    def no_attack(*args, **kwargs):
        raise AssertionError("attacked an image whose score was cached")

    monkeypatch.setattr(surgery.attacks.base.Attack, "__call__", no_attack)
    _equal_tables(sharded_table(tmp_path / "cache"), fresh)
