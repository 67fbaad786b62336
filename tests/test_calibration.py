"""robustify(target=...): the blend is chosen on validation by the documented rule."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import surgery
import surgery.calibration
from surgery.calibration import calibrate_blend
from tests.models import SmallCNN
from tests.test_recipes import cluster_data


class Dial(nn.Module):
    """A model whose one weight is the keep of the blend it came from (0 original, 1 tuned)."""

    def __init__(self, value: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return self.conv(x).mean((1, 2, 3)) + 0 * self.value


# validation SROCC and robustness (AbsGain) of each keep: more keep, more robust, less accurate
SROCC = {0.0: 0.90, 0.2: 0.899, 0.4: 0.897, 0.6: 0.892, 0.8: 0.85, 1.0: 0.80}
GAIN = {0.0: 1.0, 0.2: 0.8, 0.4: 0.6, 0.6: 0.5, 0.8: 0.3, 1.0: 0.2}


@pytest.fixture
def dial(monkeypatch):
    def measure(model, stream, mos, attacked, attack, directions):
        keep = round(model.value.item(), 6)
        return SROCC[keep], {d: GAIN[keep] for d in directions}, torch.zeros(1)

    monkeypatch.setattr(surgery.calibration, "_measure", measure)
    original, tuned = Dial(0.0), Dial(1.0)
    tuned.load_state_dict({**original.state_dict(), "value": torch.tensor(1.0)})
    val = (torch.rand(4, 3, 8, 8), torch.rand(4))
    return original, tuned, val


@pytest.mark.parametrize("target,keep", [(0.99, 0.6), (0.995, 0.4), (0.9, 0.8), (0.88, 1.0)])
def test_the_most_robust_keep_that_meets_the_target_is_chosen(dial, target, keep):
    original, tuned, val = dial
    report = calibrate_blend(original, tuned, val, target, keeps=sorted(SROCC))
    assert report.met and report.keep == keep
    assert report.val_srocc == SROCC[keep] and report.val_gain == {"up": GAIN[keep], "down": GAIN[keep]}
    assert report.val_x == GAIN[keep] / GAIN[0.0] and report.val_srocc_original == 0.90
    assert [r["keep"] for r in report.grid] == sorted(SROCC) and f"keep {keep:g}" in str(report)
    assert tuned.value.item() == 1.0 and original.value.item() == 0.0  # neither model is changed


def test_an_original_whose_scores_fall_as_the_mos_rises_is_refused():
    """A share of a SROCC <= 0 ranks the blends backwards (the worse they rank, the more they
    'keep'): the calibration names the problem instead of choosing by it."""
    torch.manual_seed(0)
    original = Squashed()
    with torch.no_grad():
        original.factor.fill_(-1.0)
    images, _ = cluster_data(16, 16)
    with torch.no_grad():
        targets = original.net(images)  # what the unscaled network ranks perfectly
    with pytest.raises(ValueError, match="validation SROCC is .*negate a lower-is-better score"):
        calibrate_blend(original, copy.deepcopy(original), (images, targets), 0.99, keeps=[1.0], attack_images=2)


# a blend that holds one direction and gives the other away: raising gets harder with the keep,
# lowering easier past 0.4
UP = {0.0: 1.0, 0.2: 0.8, 0.4: 0.6, 0.6: 0.5, 0.8: 0.3, 1.0: 0.2}
DOWN = {0.0: 2.0, 0.2: 1.7, 0.4: 1.4, 0.6: 1.8, 0.8: 2.2, 1.0: 2.4}


@pytest.mark.parametrize("directions,keep,x", [(("up", "down"), 0.4, 0.7), (("up",), 1.0, 0.2), (("down",), 0.4, 0.7)])
def test_a_blend_is_as_robust_as_its_worse_direction(monkeypatch, directions, keep, x):
    def measure(model, stream, mos, attacked, attack, directions):
        value = round(model.value.item(), 6)
        return 0.9, {d: (UP if d == "up" else DOWN)[value] for d in directions}, torch.zeros(1)

    monkeypatch.setattr(surgery.calibration, "_measure", measure)
    original, tuned = Dial(0.0), Dial(1.0)
    tuned.load_state_dict({**original.state_dict(), "value": torch.tensor(1.0)})
    val = (torch.rand(4, 3, 8, 8), torch.rand(4))
    report = calibrate_blend(original, tuned, val, 0.99, keeps=sorted(UP), directions=directions)
    assert report.keep == keep and report.val_x == pytest.approx(x) and list(report.val_gain) == list(directions)
    assert all(f"val AbsGain {d}" in str(report) for d in directions)


@pytest.mark.parametrize("directions", [(), ("up", "up"), ("sideways",)])
def test_bad_directions_are_named(directions):
    images, targets = cluster_data(8, 8)
    with pytest.raises(ValueError, match="directions must be"):
        calibrate_blend(SmallCNN(), SmallCNN(), (images, targets), 0.99, directions=directions)


def test_an_unreachable_target_keeps_the_most_accurate_blend_and_says_so(dial):
    original, tuned, val = dial
    with pytest.warns(UserWarning, match="no blend keeps 100.0%"):
        report = calibrate_blend(original, tuned, val, 1.0, keeps=[0.2, 0.6, 1.0])
    assert not report.met and report.keep == 0.2 and "NO blend" in str(report)


@pytest.mark.parametrize("progress", [True, False])
def test_the_blends_measured_show_progress_on_stderr_only_when_asked(dial, capsys, progress):
    original, tuned, val = dial
    calibrate_blend(original, tuned, val, 0.99, keeps=[0.2, 0.6, 1.0], progress=progress)
    out, err = capsys.readouterr()
    assert out == "" and ("calibrating the blend on validation" in err) == progress and ("/3 " in err) == progress


class TrunkAndHead(nn.Module):
    """Two dials: ``trunk.value`` and ``head.value`` are the keeps of the blend each came from."""

    def __init__(self, value: float):
        super().__init__()
        self.trunk, self.head = Dial(value), Dial(value)

    def forward(self, x):
        return self.trunk(x) + self.head(x)


# (trunk keep, head keep) -> validation SROCC, gain: the head buys robustness cheaply
TWO = {(0.0, 0.0): (0.90, 1.0), (0.5, 0.5): (0.895, 0.6), (1.0, 1.0): (0.85, 0.3),
       (0.0, 1.0): (0.898, 0.7), (0.5, 1.0): (0.893, 0.5)}


def test_with_a_head_the_blends_that_keep_the_head_whole_are_measured_and_chosen(monkeypatch):
    def measure(model, stream, mos, attacked, attack, directions):
        srocc, gain = TWO[(round(model.trunk.value.item(), 6), round(model.head.value.item(), 6))]
        return srocc, {d: gain for d in directions}, torch.zeros(1)

    monkeypatch.setattr(surgery.calibration, "_measure", measure)
    original, tuned = TrunkAndHead(0.0), TrunkAndHead(1.0)
    with torch.no_grad():
        for name, value in original.state_dict().items():
            if not name.endswith("value"):
                tuned.state_dict()[name].copy_(value)
    val = (torch.rand(4, 3, 8, 8), torch.rand(4))
    report = calibrate_blend(original, tuned, val, 0.99, keeps=[0.5, 1.0], head=["head"])
    assert [(r["keep"], r["head_keep"]) for r in report.grid] == [(0.5, 0.5), (1.0, 1.0), (0.0, 1.0), (0.5, 1.0)]
    assert (report.keep, report.head_keep, report.val_x) == (0.5, 1.0, 0.5)
    assert report.blend_keep == {"": 0.5, "head": 1.0} and "the head's change kept whole: head" in str(report)
    plain = calibrate_blend(original, tuned, val, 0.99, keeps=[0.5, 1.0])  # no head: the uniform blends only
    assert plain.blend_keep == 0.5 and [r["head_keep"] for r in plain.grid] == [0.5, 1.0]
    for head in (["classifier"], [""], ["head", "head"]):
        with pytest.raises(ValueError, match="head must name distinct modules of the model"):
            calibrate_blend(original, tuned, val, 0.99, head=head)


class Squashed(nn.Module):
    """SmallCNN's score times a learnable factor: blending toward a smaller factor only squashes the scores."""

    def __init__(self):
        super().__init__()
        self.net = SmallCNN()
        self.factor = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.factor * self.net(x)


def test_a_blend_that_only_squashes_the_scores_is_not_more_robust():
    """Each blend's gain is in the range of its own validation scores: a fine-tune that halves
    every score (and so every score change) measures as robust as the original, not 2x."""
    torch.manual_seed(0)
    original = Squashed()
    tuned = copy.deepcopy(original)
    with torch.no_grad():
        tuned.factor.fill_(0.5)
    images, targets = cluster_data(16, 16)
    report = calibrate_blend(original, tuned, (images, targets), 0.99, keeps=[0.5, 1.0], attack_images=8)
    for row in report.grid:
        assert row["val_gain"] == pytest.approx(report.val_gain_original, rel=1e-4)
        assert row["srocc_kept"] == pytest.approx(1.0)


@pytest.mark.parametrize("count, expected", [(4, [0, 13, 27, 40]), (64, list(range(41)))])
def test_the_attacked_validation_images_are_spread_through_the_set(monkeypatch, count, expected):
    """A validation set in order of its references was attacked on its first 16 images: the
    distortions of one or two references. The images are now evenly spaced through it, and each
    gain is measured against that image's own clean score."""
    attacked = []
    monkeypatch.setattr(surgery.calibration.PGD, "__call__", lambda self, model, images, direction: attacked.append(images) or images * 0.9)
    torch.manual_seed(0)
    images, targets = torch.rand(41, 3, 8, 8), torch.rand(41)
    images[:, :, 0, 0] = torch.arange(41.0)[:, None] / 100  # each image names its index
    model = SmallCNN()
    report = calibrate_blend(model, copy.deepcopy(model), (images, targets), 0.99, keeps=[1.0], attack_images=count, batch_size=4)
    firsts = torch.cat(attacked)[: len(expected)]  # the original's batches come first, raising the score
    assert (firsts[:, 0, 0, 0] * 100).round().long().tolist() == expected
    clean, moved = surgery.scoring.scores(model, images, 8), surgery.scoring.scores(model, images * 0.9, 8)
    lo, hi = surgery.metrics.score_range(clean)
    assert report.val_gain_original["up"] == pytest.approx(surgery.metrics.abs_gain(clean[expected], moved[expected], lo, hi), rel=1e-5)
    assert report.val_gain_original["down"] == pytest.approx(-report.val_gain_original["up"])  # a lowering's size


def test_a_dataset_of_images_of_several_sizes_is_attacked_batch_by_batch():
    """The attacked images were joined into one tensor: images of two sizes failed."""

    class TwoSizes(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, index):
            side = 16 if index < 6 else 24
            return torch.full((3, side, side), 0.2 + index / 20), torch.tensor(float(index))

    torch.manual_seed(0)
    model = SmallCNN()
    report = calibrate_blend(model, copy.deepcopy(model), TwoSizes(), 0.99, keeps=[1.0], attack_images=4, batch_size=4)
    assert min(report.val_gain_original.values()) > 0 and report.grid[0]["val_gain"] == pytest.approx(report.val_gain_original)


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_a_bad_count_of_attacked_images_is_named(count):
    images, targets = cluster_data(8, 8)
    with pytest.raises(ValueError, match="attack_images must be a count"):
        calibrate_blend(SmallCNN(), SmallCNN(), (images, targets), 0.99, attack_images=count)


def test_robustify_with_a_target_blends_by_the_calibrated_keep():
    images, targets = cluster_data(16, 24)
    train, val = (images[:16], targets[:16]), (images[16:], targets[16:])
    options = {"epochs": 1, "lr": 1e-2, "loss": "mse", "progress": False, "seed": 0}
    torch.manual_seed(0)
    model = SmallCNN()
    strong, _ = surgery.robustify(model, train, val, recipe="robust-strong", **options)
    robust, result = surgery.robustify(model, train, val, target=0.5, **options)
    report = result.calibration
    passing = [r for r in report.grid if r["val_srocc"] >= 0.5 * report.val_srocc_original]
    best = min(passing, key=lambda r: (r["val_x"], -r["keep"], -r["head_keep"]))
    assert report.met and (report.keep, report.head_keep) == (best["keep"], best["head_keep"])
    assert report.head == ("fc",) and {r["head_keep"] for r in report.grid if r["keep"] < 1} > {1.0}  # both families
    expected = surgery.blend(copy.deepcopy(strong), model, report.blend_keep)
    for key, value in robust.state_dict().items():
        torch.testing.assert_close(value, expected.state_dict()[key])


def test_robustify_calibrates_to_the_recipes_target_by_default(monkeypatch):
    """With val and no target, the robust recipe's 0.99; robust-strong (no target) is kept whole."""
    import surgery.recipes

    targets_seen = []
    calibrate = surgery.recipes.calibrate_blend
    monkeypatch.setattr(surgery.recipes, "calibrate_blend", lambda *a, **kw: targets_seen.append(a[3]) or calibrate(*a, **kw))
    images, targets = cluster_data(16, 24)
    train, val = (images[:16], targets[:16]), (images[16:], targets[16:])
    _, result = surgery.robustify(SmallCNN(), train, val, epochs=1, progress=False)
    assert targets_seen == [0.99] and result.calibration.target == surgery.RECIPES["robust"].target == 0.99
    _, result = surgery.robustify(SmallCNN(), train, val, recipe="robust-strong", epochs=1, progress=False)
    assert result.calibration is None and targets_seen == [0.99]


def test_target_none_blends_by_the_recipes_fixed_keep():
    images, targets = cluster_data(16, 24)
    train, val = (images[:16], targets[:16]), (images[16:], targets[16:])
    options = {"epochs": 1, "lr": 1e-2, "progress": False, "seed": 0}
    torch.manual_seed(0)
    model = SmallCNN()
    strong, _ = surgery.robustify(model, train, val, recipe="robust-strong", **options)
    fixed, result = surgery.robustify(model, train, val, target=None, **options)
    assert result.calibration is None
    expected = surgery.blend(copy.deepcopy(strong), model, surgery.RECIPES["robust"].blend)
    for key, value in fixed.state_dict().items():
        torch.testing.assert_close(value, expected.state_dict()[key])


@pytest.mark.parametrize("target", [1.5, 0, True, "0.99", "all"])
def test_a_bad_target_is_refused_before_anything_trains(monkeypatch, target):
    import surgery.recipes

    monkeypatch.setattr(surgery.recipes, "finetune", lambda *a, **kw: pytest.fail("trained before checking target"))
    images, targets = cluster_data(8, 8)
    with pytest.raises(ValueError, match="target must be"):
        surgery.robustify(SmallCNN(), (images, targets), (images, targets), target=target)


def test_an_empty_validation_set_is_named():
    images, targets = cluster_data(8, 8)
    with pytest.raises(ValueError, match="empty batch of val images"):
        calibrate_blend(SmallCNN(), SmallCNN(), (images[:0], targets[:0]), 0.99)


def test_target_needs_validation_data_and_a_robust_recipe():
    images, targets = cluster_data(16, 8)
    with pytest.raises(ValueError, match="pass val"):
        surgery.robustify(SmallCNN(), (images, targets), target=0.99)
    with pytest.raises(ValueError, match="target= needs 'robust'"):
        surgery.robustify(SmallCNN(), (images, targets), (images, targets), recipe="paper", target=0.99)
    with pytest.raises(ValueError, match="target must be"):
        calibrate_blend(SmallCNN(), SmallCNN(), (images, targets), 1.5)
    with pytest.warns(UserWarning, match="no val"):
        surgery.robustify(SmallCNN(), (images, targets), epochs=1, progress=False)


def test_cached_measurements_are_chosen_from_again_and_never_stale(tmp_path, monkeypatch):
    """With cache_dir the measurements are kept: the same call, or another target, measures
    nothing again and reports the same; other weights, validation images or scores, or any other
    setting of the measurement measure afresh, each into its own file."""
    torch.manual_seed(0)
    original = SmallCNN()
    tuned = copy.deepcopy(original)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, targets = cluster_data(16, 16)
    first = calibrate_blend(original, tuned, (images, targets), 0.99, keeps=[0.5, 1.0], attack_images=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("calibration-*.json"))) == 1
    measure = surgery.calibration._measure
    calls = []
    monkeypatch.setattr(surgery.calibration, "_measure", lambda *a: calls.append(1) or measure(*a))
    again = calibrate_blend(original, tuned, (images, targets), 0.99, keeps=[0.5, 1.0], attack_images=4, cache_dir=tmp_path)
    assert calls == [] and str(again) == str(first)
    looser = calibrate_blend(original, tuned, (images, targets), 0.5, keeps=[0.5, 1.0], attack_images=4, cache_dir=tmp_path)
    assert calls == [] and looser.grid == first.grid and looser.target == 0.5
    changed_pixel, changed_score = images.clone(), targets.clone()
    changed_pixel[3, 1, 5, 7] += 0.01
    changed_score[3] += 0.01
    others = [  # each measures what the first call did not: none may be answered from its file
        {"val": (images, changed_score)}, {"val": (changed_pixel, targets)}, {"eps": 2 / 255}, {"steps": 3},
        {"keeps": [0.4, 1.0]}, {"directions": ("up",)}, {"head": ["fc"]}, {"seed": 1}, {"attack_images": 3},
    ]
    for change in others:
        options = {"val": (images, targets), "keeps": [0.5, 1.0], "attack_images": 4, **change}
        calibrate_blend(original, tuned, options.pop("val"), 0.99, cache_dir=tmp_path, **options)
    with torch.no_grad():
        next(tuned.parameters()).add_(0.01)
    calibrate_blend(original, tuned, (images, targets), 0.99, keeps=[0.5, 1.0], attack_images=4, cache_dir=tmp_path)
    assert len(calls) >= 3 * (len(others) + 1)  # the original and two blends at least, each time
    assert len(list(tmp_path.glob("calibration-*.json"))) == len(others) + 2


def test_an_unreadable_cached_measurement_is_measured_again(tmp_path):
    torch.manual_seed(0)
    original = SmallCNN()
    images, targets = cluster_data(16, 16)
    options = {"keeps": [1.0], "attack_images": 4, "cache_dir": tmp_path}
    first = calibrate_blend(original, copy.deepcopy(original), (images, targets), 0.99, **options)
    (path,) = tmp_path.glob("calibration-*.json")
    path.write_text(path.read_text()[:40])  # a file cut short
    again = calibrate_blend(original, copy.deepcopy(original), (images, targets), 0.99, **options)
    assert str(again) == str(first) and path.read_text().endswith("}")


def test_robustify_rerun_in_its_checkpoint_dir_does_not_calibrate_again(tmp_path, monkeypatch):
    images, targets = cluster_data(16, 24)
    train, val = (images[:16], targets[:16]), (images[16:], targets[16:])
    options = {"epochs": 1, "progress": False, "seed": 0, "checkpoint_dir": tmp_path}
    torch.manual_seed(0)
    model = SmallCNN()
    first, result = surgery.robustify(model, train, val, **options)
    monkeypatch.setattr(surgery.calibration, "_measure", lambda *a: pytest.fail("measured again"))
    again, rerun = surgery.robustify(model, train, val, **options)
    assert str(rerun.calibration) == str(result.calibration)
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, first.state_dict()[key])


def test_ranks_of_a_process_group_share_the_cached_measurements(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "torchrun_calibrate.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert reports[0] == reports[1] and len(list((tmp_path / "cache").glob("calibration-*.json"))) == 1
