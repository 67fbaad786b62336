"""The paper's comparison script runs end to end (tiny settings; needs ../shared/data)."""
import os
import subprocess
import sys

import pytest
import torch

import surgery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIPS = os.path.join(ROOT, "..", "shared", "data", "nips2017")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """One pseudo-MOS cache for both scripts (the same 20 references)."""
    return str(tmp_path_factory.mktemp("labels") / "labels.pt")


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_paper_tables_writes_every_report(tmp_path, labels):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "paper_tables.py"), "--references", "20",
        "--eval-references", "1", "--attack-images", "2", "--tune-steps", "1", "--epochs", "1", "--val-images", "4",
        "--variants", "control", "cayley+pls", "nt", "nt+epochs-2", "at", "silu", "trades-2", "blend-0.5+trades-2", "distill", "robust",
        "--seeded", "control", "--seeds", "0", "1",
        "--headline", "trades-2", "--strong", "apgd-2", "--trades-steps", "1", "--parts", "table", "positions",
        "--masking-steps", "2", "--masking-queries", "4",
        "--labels", labels, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    comparison = (out / "comparison.md").read_text()
    rows = ("| original |", "| control | 2 |", "| cayley+pls | 1 |", "| nt |", "| nt+epochs-2 | 1 |", "| at |", "| silu |",
            "| trades-2 | 1 |", "| blend-0.5+trades-2 | 1 |", "| distill | 1 |", "| robust | 1 |")
    for row in rows:
        assert row in comparison
    assert "apgd-2 down abs_gain_auc" in comparison and "trades-2 apgd-2 down AbsGainAUC" in comparison
    assert "## Goals" in comparison and "## Gradient-masking checks" in comparison
    assert "trades-2 vs nt+epochs-2:" in comparison  # every baseline variant is a rival
    last = torch.load(tmp_path / "cache" / "tune" / "nt+epochs-2-lr0.0003-1x2" / "last.pt", weights_only=True)
    assert len(last["history"]) == 2  # its own schedule, not --epochs
    assert (out / "tradeoff-apgd-2.png").stat().st_size > 0
    assert "spearman(lemma ratio, pgd-1 auc)" in (out / "positions.md").read_text()
    assert (out / "tradeoff.png").stat().st_size > 0 and (out / "results.csv").stat().st_size > 0
    # the recipe row is robustify's own fine-tune: its checkpoint records the recipe's lr, not --lr's 3e-4
    folder = f"recipe-robust-{surgery.RECIPES['robust'].training_digest()}-8+4-s0"  # named by what the recipe trains
    robust = torch.load(tmp_path / "cache" / "tune" / folder / "last.pt", weights_only=True)
    assert robust["run"]["settings"]["lr"] == surgery.RECIPES["robust"].lr


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_recipe_proof_measures_robustify_against_the_original_and_a_control(tmp_path, labels):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "recipe_proof.py"), "--references", "20", "--eval-references", "1",
        "--first-eval-reference", "1", "--attack-images", "2", "--tune-steps", "1", "--epochs", "1", "--val-images", "4",
        "--seeds", "0", "1",
        "--attacks", "pgd-1", "--strong", "apgd-2", "--masking-steps", "2", "--queries", "4",
        "--labels", labels, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "out" / "default.md").read_text()
    for row in ("| default original | 1 |", "| default robust s0 | 1 |", "| default control s1 | 1 |",
                "| default robust | 2 |", "| default control | 2 |"):
        assert row in report
    assert "apgd-2 down x" in report and "robust vs control" in report and "### default robust s1" in report
    assert "square-4 (black-box)" in report  # the masking checks ran on every row
    assert "1 held-out references (numbers 2 to 2 in sorted order)" in report  # the first one skipped
    past = list(command)
    past[past.index("--first-eval-reference") + 1] = "4"  # 20 references hold 4 held-out ones
    refused = subprocess.run(past, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert refused.returncode != 0 and "more than the 4 held-out references" in refused.stderr
    past[past.index("--first-eval-reference") + 1] = "-1"
    refused = subprocess.run(past, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert refused.returncode != 0 and "--first-eval-reference must be >= 0, got -1" in refused.stderr
    # a rerun resumes from the cache: no fine-tune epoch runs again, and the report is the same
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert again.returncode == 0 and "epoch 1/" not in again.stderr
    assert (tmp_path / "out" / "default.md").read_text() == report
    # more attacked images: their scores are cached beside the first set's, the fine-tunes reused
    more = list(command)
    more[more.index("--attack-images") + 1] = "3"
    wider = subprocess.run(more, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert wider.returncode == 0 and "epoch 1/" not in wider.stderr, wider.stderr[-3000:]
    assert "3 of them attacked" in (tmp_path / "out" / "default.md").read_text()
    assert len(list((tmp_path / "cache" / "default").glob("eval-*"))) == 2


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_recipe_gap_measures_training_and_validation_images_and_each_distortion(tmp_path, labels):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "recipe_gap.py"), "--references", "20", "--eval-references", "1",
        "--attack-images", "2", "--tune-steps", "1",
        "--epochs", "1", "--val-images", "30", "--attacked", "2", "--candidates", "recipe", "--labels", labels,
        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "gap.md"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "gap.md").read_text()
    assert "| recipe | 0 | training |" in report and "| recipe | 0 | validation |" in report
    assert "| recipe | 0 | original |" in report and "| recipe | 0 | whole |" in report and "| all |" in report


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_recipe_front_measures_each_candidate_over_the_keep_grid_on_validation(tmp_path, labels):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "recipe_front.py"), "--references", "20", "--eval-references", "1",
        "--attack-images", "2", "--tune-steps", "1",
        "--epochs", "1", "--val-images", "4", "--candidates", "recipe", "recipe+best", "eps-8+blocks-1+bn-eval+split", "--eps", "4",
        "--target", "0.5",
        "--labels", labels, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "front.md"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "front.md").read_text()
    assert "| recipe | 0 |" in report and "| eps-8+blocks-1+bn-eval+split | 0 |" in report and "x at 4/255" in report
    assert "| recipe+best | 0 |" in report and len(list((tmp_path / "cache" / "default" / "tune").iterdir())) == 2  # best: no new fine-tune
    assert "head whole: keep" in report and "head whole: up x at 4/255" in report and "chosen: down x at 4/255" in report
    assert "keep 0" in done.stdout  # each calibration report is printed
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert again.returncode == 0 and "epoch 1/" not in again.stderr and (tmp_path / "front.md").read_text() == report


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_attack_quality_scores_attacked_images_against_their_references(tmp_path, labels):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "attack_quality.py"), "--references", "20", "--eval-references", "1",
        "--attack-images", "2", "--models", "default", "--eps", "4", "--steps", "2", "--labels", labels,
        "--out", str(tmp_path / "quality.md"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]  # it refuses references that do not give the pseudo-MOS back
    report = (tmp_path / "quality.md").read_text()
    for perturbation in ("random sign noise", "APGD-2 up", "APGD-2 down"):
        assert f"| default | 4.0000 | {perturbation} |" in report


def test_attack_qualitys_sign_noise_moves_every_pixel_by_the_budget(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from attack_quality import sign_noise

    images = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    moved = sign_noise(images, 4 / 255, seed=0)
    torch.testing.assert_close((moved - images).abs(), torch.full_like(images, 4 / 255))
    assert torch.equal(moved, sign_noise(images, 4 / 255, seed=0)) and (sign_noise(torch.ones(1, 3, 4, 4), 0.5, 0) <= 1).all()


def test_recipe_fronts_bn_eval_keeps_the_running_statistics_through_a_fine_tune(monkeypatch):
    """The bn-eval candidate: its BatchNorm layers normalise as at inference while their scale
    and shift train, in the copy robustify makes too."""
    import copy

    from torch import nn

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from recipe_front import running_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1),
                          nn.Flatten(0))
    pinned = copy.deepcopy(running_statistics(model)).train()
    statistics = copy.deepcopy(pinned[1].state_dict())
    surgery.finetune(pinned, (torch.rand(8, 3, 8, 8), torch.rand(8)), epochs=1, lr=1e-2, progress=False)
    assert not pinned[1].training
    torch.testing.assert_close(pinned[1].running_mean, statistics["running_mean"])
    assert not torch.equal(pinned[1].weight, statistics["weight"])


def test_recipe_fronts_split_candidate_raises_half_the_scores_and_lowers_the_rest(monkeypatch):
    from surgery.defenses.base import TrainingScore
    from tests.models import TinyIQA

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from recipe_front import SplitDirectionConsistency

    torch.manual_seed(0)
    model, images = TinyIQA(), torch.rand(5, 3, 8, 8) * 0.5 + 0.25
    score = TrainingScore(model, lambda network, x: network(x))
    attacked = SplitDirectionConsistency(eps=8 / 255, steps=3).adversarial(score, images)
    with torch.no_grad():
        change = model(attacked) - model(images)
    assert (change[:2] > 0).all() and (change[2:] < 0).all() and (attacked - images).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_paper_replay_measures_every_model_with_every_attack(tmp_path, labels):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "paper_replay.py"), "--references", "20", "--size", "192", "256",
        "--eval-references", "1", "--attack-images", "2", "--strong-steps", "3", "--tune-steps", "1", "--epochs", "1",
        "--val-images", "4", "--labels", labels, "--cache", str(tmp_path / "cache"),
        "--out", str(tmp_path / "out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "out" / "replay.md").read_text()
    for row in ("| original |", "| control |", "| described |", "| paper-code |"):
        assert row in report
    for column in ("paper-pgd-1 abs_gain_auc", "pgd-8 x original", "apgd-3 abs_gain_auc"):
        assert column in report


@pytest.mark.skipif(not os.path.isdir(NIPS), reason="../shared/data/nips2017 is not here")
def test_train_scratch_writes_weights_the_zoo_loads(tmp_path, labels):
    from surgery.zoo.scratch import load_scratch_weights

    out = tmp_path / "r.pt"
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "train_scratch.py"), "--references", "20", "--epochs", "1",
        "--crop", "64", "--workers", "1", "--labels", labels, "--cache", str(tmp_path / "cache"), "--out", str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = torch.load(out, weights_only=True)
    assert set(record["test"]) == {"srocc", "plcc", "srocc_by_distortion"} and (record["crop"], record["crop_grid"]) == (64, 32)
    assert set(record["test"]["srocc_by_distortion"]) == {"blur", "contrast", "jpeg", "noise"}
    assert record["state_dict"]["backbone.bn1.num_batches_tracked"].dtype == torch.int64
    model = load_scratch_weights(surgery.create_model("resnet18-scratch"), out)
    assert model.score_range == tuple(record["score_range"])


def test_pack_nips_writes_the_references_the_loader_reads_back_rounded(tmp_path):
    """The packed copy holds each resized reference rounded to 8 bits, and nothing else."""
    import numpy as np
    from PIL import Image

    from surgery.data import NIPS2017

    source = tmp_path / "nips"
    os.makedirs(source / "images")
    rows = ["ImageId,URL,License,Author\n"]
    for name in ("aa", "bb"):
        pixels = np.random.default_rng(len(rows)).integers(0, 256, (30, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(source / "images" / f"{name}.png")
        rows.append(f"{name},http://example.invalid/{name},CC-BY,someone\n")
    (source / "images.csv").write_text("".join(rows))
    out = tmp_path / "packed"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "pack_nips.py"), "--data", str(source), "--size", "16",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resized, packed = NIPS2017(source, size=(16, 16)), NIPS2017(out, size=(16, 16))
    assert packed.ids == resized.ids == ["aa", "bb"] and sorted(os.listdir(out / "images")) == ["aa.webp", "bb.webp"]
    for i in range(2):
        assert torch.equal(packed[i], (resized[i] * 255).round() / 255)
