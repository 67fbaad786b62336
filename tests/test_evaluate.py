"""evaluate/compare: the table's numbers follow from the scores; sweeps resume from cache."""
import json
import os
import subprocess
import sys

import pytest
import torch

import surgery
from surgery import metrics
from surgery.attacks import PGD, scores
from surgery.evaluation import Table, compare, evaluate, resolve_attacks
from tests.models import BatchNormIQA, TinyIQA, assert_unchanged, snapshot


@pytest.fixture
def data():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 12, 12)
    return images, torch.linspace(1, 5, 6)


def test_resolve_attacks_expands_pgd_over_the_grid():
    runs = resolve_attacks(["pgd-1", "fgsm", "pgd-8", "uap", "stadv"])
    names = [name for name, _, _ in runs]
    assert names.count("pgd-1") == 10 and names.count("pgd-8") == 5 and names[-2:] == ["uap", "stadv"]
    assert all(a.alpha == e for n, e, a in runs if n == "pgd-1")
    with pytest.raises(ValueError, match="unknown attack"):
        resolve_attacks(["cw"])


def test_table_numbers_match_hand_computation(data):
    images, mos = data
    model = TinyIQA().eval()
    table = evaluate(model, images, mos, attacks=["pgd-1", "stadv"], eps_grid=(2 / 255, 4 / 255), progress=False)
    clean = scores(model, images)
    lo, hi = float(clean.min()), float(clean.max())
    assert table.rows[0]["attack"] == "clean" and table.rows[0]["srocc"] == pytest.approx(metrics.srocc(clean, mos))
    pgd_rows = [r for r in table.rows if r["attack"] == "pgd-1"]
    assert [r["eps"] for r in pgd_rows] == [2, 4]
    attacked = scores(model, PGD(eps=4 / 255, steps=1)(model, images))
    assert pgd_rows[1]["abs_gain"] == pytest.approx(metrics.abs_gain(clean, attacked, lo, hi), rel=1e-5)
    assert pgd_rows[1]["abs_gain"] > pgd_rows[0]["abs_gain"] > 0
    summary = table.summaries[0]
    expected_auc = (pgd_rows[0]["abs_gain"] + pgd_rows[1]["abs_gain"]) / 2 * 2
    assert summary["pgd-1 abs_gain_auc"] == pytest.approx(expected_auc)
    assert "stadv abs_gain" in summary and "evaluated images" in summary["score_range"]


def test_given_score_range_and_train_images(data):
    images, _ = data
    model = TinyIQA().eval()
    table = evaluate(model, images, attacks=["pgd-1"], eps_grid=(2 / 255,), score_range=(-1.0, 1.0), progress=False)
    assert table.summaries[0]["score_range"].endswith("(given)")
    table = evaluate(model, images, attacks=[], train_images=torch.rand(4, 3, 12, 12), progress=False)
    assert "train images" in table.summaries[0]["score_range"]


def test_the_model_own_score_range_is_the_default(data):
    images, _ = data
    model = TinyIQA().eval()
    model.score_range = (-2.0, 3.0)
    table = evaluate(model, images, attacks=[], train_images=torch.rand(4, 3, 12, 12), progress=False)
    assert table.summaries[0]["score_range"] == "-2..3 (model)"
    assert evaluate(model, images, attacks=[], score_range=(0.0, 1.0), progress=False).summaries[0]["score_range"] == "0..1 (given)"
    model.score_range = (1.0, 1.0)
    with pytest.raises(ValueError, match="low < high"):
        evaluate(model, images, attacks=[], progress=False)


def test_interrupted_sweep_resumes_from_cache(data, tmp_path, monkeypatch):
    images, mos = data
    model = TinyIQA().eval()
    full = evaluate(model, images, mos, attacks=["pgd-1"], eps_grid=(2 / 255, 4 / 255), batch_size=2, progress=False)

    calls = []
    real_call = PGD.__call__

    def crash_after_three(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(PGD, "__call__", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, images, mos, attacks=["pgd-1"], eps_grid=(2 / 255, 4 / 255), batch_size=2, cache=tmp_path, progress=False)
    calls.clear()
    monkeypatch.setattr(PGD, "__call__", lambda self, *a, **k: (calls.append(1), real_call(self, *a, **k))[1])
    resumed = evaluate(model, images, mos, attacks=["pgd-1"], eps_grid=(2 / 255, 4 / 255), batch_size=2, cache=tmp_path, progress=False)
    assert len(calls) == 3  # 6 batches in all, 3 were done before the crash
    for a, b in zip(full.rows, resumed.rows):
        assert a == pytest.approx(b)

    with pytest.raises(ValueError, match="other images"):
        evaluate(model, torch.rand(6, 3, 12, 12), attacks=["pgd-1"], eps_grid=(2 / 255,), batch_size=2, cache=tmp_path,
                 progress=False)


def test_cache_is_keyed_by_weights_settings_and_direction(data, tmp_path):
    images, mos = data
    model = TinyIQA().eval()
    run = lambda m, **kw: evaluate(m, images, mos, eps_grid=(4 / 255,), cache=tmp_path, progress=False, **kw)  # noqa: E731
    run(model, attacks=["pgd-1"])
    with torch.no_grad():
        model.fc.weight.mul_(3)  # further trained under the same name
    fresh = evaluate(model, images, mos, attacks=["pgd-1"], eps_grid=(4 / 255,), progress=False)
    assert run(model, attacks=["pgd-1"]).rows == fresh.rows
    other_step = PGD(eps=4 / 255, steps=1, alpha=1 / 255)
    assert run(model, attacks=[other_step]).rows[1]["mean_score"] == pytest.approx(
        evaluate(model, images, mos, attacks=[other_step], progress=False).rows[1]["mean_score"]
    )
    down = run(model, attacks=["pgd-1"], direction="down")
    assert down.rows[1]["attack"] == "pgd-1 down" and down.rows[1]["abs_gain"] < 0


def test_cache_is_keyed_by_batch_size(data, tmp_path, monkeypatch):
    images, mos = data
    model = TinyIQA().eval()
    calls = []
    real_call = PGD.__call__
    monkeypatch.setattr(PGD, "__call__", lambda self, *a, **k: (calls.append(1), real_call(self, *a, **k))[1])
    run = lambda size: evaluate(model, images, mos, attacks=["pgd-4-rs"], eps_grid=(4 / 255,), batch_size=size,  # noqa: E731
                                cache=tmp_path, progress=False)
    by_two = run(2)
    calls.clear()
    by_three = run(3)  # random starts are drawn per batch: another batch size is another result
    assert len(calls) == 2
    assert by_three.rows == evaluate(model, images, mos, attacks=["pgd-4-rs"], eps_grid=(4 / 255,), batch_size=3, progress=False).rows
    calls.clear()
    assert run(2).rows == by_two.rows and not calls


def test_both_directions_in_one_call_equal_one_call_each(data):
    images, mos = data
    model = TinyIQA().eval()
    options = {"eps_grid": (2 / 255, 4 / 255), "progress": False}
    attacks = ["pgd-2", "uap"]
    both = evaluate(model, images, mos, attacks, direction="both", **options)
    up = evaluate(model, images, mos, attacks, **options)
    down = evaluate(model, images, mos, attacks, direction="down", **options)
    assert both.rows == up.rows + down.rows[1:]
    assert both.summaries[0] == {**up.summaries[0], **down.summaries[0]}
    summary = both.summaries[0]
    assert summary["pgd-2 down abs_gain_auc"] > 0 and summary["uap down abs_gain"] > 0  # sizes of the lowering
    assert [r["abs_gain"] < 0 for r in both.rows if r["attack"] == "pgd-2 down"] == [True, True]
    with pytest.raises(ValueError, match="direction must be"):
        evaluate(model, images, mos, attacks, direction=["up", "sideways"], **options)


def test_compare_hardened_and_original_side_by_side(data, tmp_path):
    images, mos = data
    images = torch.nn.functional.interpolate(images, size=32)
    original = surgery.create_model("timm-iqa", backbone="resnet18").eval()
    hardened = surgery.harden(original, input_size=(3, 32, 32)).eval()
    models = {"original": original, "hardened": hardened}
    table = compare(models, images, mos, attacks=["pgd-1"], eps_grid=(2 / 255, 4 / 255), progress=False)
    assert [s["model"] for s in table.summaries] == ["original", "hardened"]
    for path in ("t.csv", "t.md", "t.json"):
        table.write(tmp_path / path)
    assert json.loads((tmp_path / "t.json").read_text())["summaries"][1]["model"] == "hardened"
    assert "| model |" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t.csv").read_text().startswith("model,attack,eps")
    with pytest.raises(ValueError, match="use .csv"):
        table.write(tmp_path / "t.xlsx")


def test_compare_shares_one_score_range_unless_named(data):
    images, mos = data
    models = {"a": TinyIQA().eval(), "b": TinyIQA().eval()}
    table = compare(models, images, mos, attacks=[], score_range=(-1.0, 1.0), score_ranges={"b": (0.0, 2.0)}, progress=False)
    assert [s["score_range"] for s in table.summaries] == ["-1..1 (given)", "0..2 (given)"]


def test_mos_length_must_match(data):
    images, _ = data
    with pytest.raises(ValueError, match="6 images but 3 MOS"):
        evaluate(TinyIQA(), images, [1, 2, 3], attacks=[], progress=False)


def test_empty_table_renders():
    assert Table().to_markdown() == ""


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_evaluate_scores_in_eval_mode_and_gives_the_model_back(data, mode):
    images, mos = data
    model = BatchNormIQA().train(mode != "eval")
    if mode == "mixed":
        model.head.eval()
    model.head[1].weight.requires_grad_(False)
    model.features[0].weight.grad = torch.ones_like(model.features[0].weight)
    before = snapshot(model)
    attacks = ["pgd-2", "uap", "stadv"]
    table = evaluate(model, images, mos, attacks=attacks, eps_grid=(4 / 255,), progress=False)
    assert_unchanged(model, before)
    reference = BatchNormIQA()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = reference.eval()(images)
    assert table.rows[0]["mean_score"] == pytest.approx(float(expected.mean()), rel=1e-6)
    again = evaluate(model, images, mos, attacks=attacks, eps_grid=(4 / 255,), progress=False)
    assert again.rows == table.rows
    assert_unchanged(model, before)


def test_plots_leave_matplotlib_backend_alone(tmp_path):
    """Importing and using surgery.report draws on its own figures: a notebook's backend stays."""
    code = (
        "import matplotlib; before = matplotlib.get_backend()\n"
        "import surgery, surgery.report as report\n"
        "table = surgery.Table([{'model': 'm', 'attack': 'pgd-1', 'eps': e, 'abs_gain': e / 10} for e in (2.0, 4.0)],\n"
        "                      [{'model': 'm', 'srocc': 0.9, 'pgd-1 abs_gain_auc': 1.0}])\n"
        f"report.plot_curves(table, {str(tmp_path / 'curves.png')!r}); report.plot_tradeoff(table, {str(tmp_path / 'tradeoff.png')!r})\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("curves.png", "tradeoff.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attack_subset_scores_all_images_and_attacks_some(data):
    images, mos = data
    model = TinyIQA().eval()
    subset = [1, 3, 4]
    options = {"attacks": ["pgd-1", "stadv"], "eps_grid": (2 / 255, 4 / 255), "score_range": (-1.0, 1.0), "progress": False}
    table = evaluate(model, images, mos, attack_subset=subset, **options)
    alone = evaluate(model, images[subset], mos[subset], **options)
    full = evaluate(model, images, mos, attacks=[], score_range=(-1.0, 1.0), progress=False)
    summary = table.summaries[0]
    assert summary["srocc"] == full.summaries[0]["srocc"] and summary["n"] == 6 and summary["attack_n"] == 3
    for key in ("pgd-1 abs_gain_auc", "stadv abs_gain"):
        assert summary[key] == pytest.approx(alone.summaries[0][key])
    assert [r["n"] for r in table.rows[1:]] == [3, 3, 3]
    with pytest.raises(ValueError, match="attack_subset"):
        evaluate(model, images, mos, attack_subset=[6], **options)


def _sweep_table():
    rows, summaries = [], []
    for model, scale in (("original", 1.0), ("robust", 0.5), ("control", 1.2)):
        for attack, strength in (("pgd-1", 0.1), ("pgd-8", 0.3), ("apgd", 0.4)):
            rows += [{"model": model, "attack": attack, "eps": eps, "abs_gain": scale * strength * eps} for eps in (2.0, 6.0, 10.0)]
        rows.append({"model": model, "attack": "uap", "eps": 10.0, "abs_gain": scale * 0.5})  # one eps: not a curve
        summaries.append({"model": model, "srocc": 0.9 - 0.01 * scale, "pgd-1 abs_gain_auc": scale * 0.8,
                          "pgd-8 abs_gain_auc": scale * 2.4, "apgd abs_gain_auc": scale * 3.2})
    return surgery.Table(rows, summaries)


def test_curves_have_a_panel_per_attack_and_a_colour_per_model(tmp_path):
    from surgery import report

    fig = report.plot_curves(_sweep_table(), tmp_path / "curves.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["pgd-1", "pgd-8", "apgd"]
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in panels]
    assert all(c == colours[0] for c in colours) and len(set(colours[0].values())) == 3


def test_tradeoff_defaults_to_the_strongest_attack_and_says_so(tmp_path):
    from surgery import report

    fig = report.plot_tradeoff(_sweep_table(), tmp_path / "tradeoff.png")
    assert fig.axes[0].get_title() == "apgd (the strongest attack run)"
    assert report.plot_tradeoff(_sweep_table(), tmp_path / "t.png", attack="pgd-1").axes[0].get_title() == "pgd-1"


def test_random_attacks_are_reproducible_from_the_call_and_seeds_are_told_apart(data, tmp_path):
    images, mos = data
    model = TinyIQA().eval()
    run = lambda **kw: evaluate(model, images, mos, ["pgd-3-rs", "apgd-3"], eps_grid=(4 / 255,), progress=False, **kw)  # noqa: E731
    first = run()
    torch.rand(5)  # the global RNG moved
    assert run().rows == first.rows
    cached = run(seed=1, cache=tmp_path)
    assert run(seed=1, cache=tmp_path).rows == cached.rows == run(seed=1).rows
    assert run(seed=2, cache=tmp_path).rows != cached.rows  # not served from seed 1's cache


def test_compare_takes_one_attack_by_name(data):
    images, mos = data
    table = compare({"a": TinyIQA().eval()}, images, mos, "pgd-1", eps_grid=(4 / 255,), progress=False)
    assert {r["attack"] for r in table.rows} == {"clean", "pgd-1"}


class _ViewsFeatureMaps(torch.nn.Module):
    """Calls .view on a conv output: fine in the default layout, an error in channels-last."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 12 * 12, 1)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1)).squeeze(-1)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_channels_last_gives_the_same_table_and_the_model_its_layout_back(data, batch_size):
    from tests.models import SmallCNN

    images, mos = data
    torch.manual_seed(0)
    model = SmallCNN().eval()
    storages = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    before = snapshot(model)
    options = {"attacks": ["pgd-2", "pgd-2-rs", "uap"], "eps_grid": (4 / 255,), "progress": False, "batch_size": batch_size}
    plain = evaluate(model, images, mos, **options)
    fast = evaluate(model, images, mos, channels_last=True, **options)
    assert [r["attack"] for r in fast.rows] == [r["attack"] for r in plain.rows]
    for a, b in zip(plain.rows, fast.rows):
        assert a["mean_score"] == pytest.approx(b["mean_score"], abs=1e-5) and a["abs_gain"] == pytest.approx(b["abs_gain"], abs=1e-4)
    assert_unchanged(model, before)
    assert {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()} == storages


def test_memory_layout_gives_the_storage_back_on_an_error(data):
    from surgery.modes import memory_layout

    model = _ViewsFeatureMaps().eval()
    storage = model.conv.weight.data_ptr()
    with pytest.raises(RuntimeError, match="view"):
        evaluate(model, data[0], data[1], attacks=["pgd-1"], eps_grid=(4 / 255,), progress=False, channels_last=True)
    assert model.conv.weight.data_ptr() == storage and model.conv.weight.is_contiguous()
    model.register_buffer("mask", torch.ones(2, 3, 4, 5))  # a 4-D buffer, as pruning leaves
    model.conv.weight.grad = torch.ones_like(model.conv.weight)
    buffer, grad = model.mask, model.conv.weight.grad
    with memory_layout(model):
        assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv.weight.data_ptr() == storage and model.mask is buffer and model.conv.weight.grad is grad
    assert model.mask.is_contiguous() and grad.is_contiguous()
    evaluate(model, data[0], data[1], attacks=["pgd-1"], eps_grid=(4 / 255,), progress=False)  # the default layout works
