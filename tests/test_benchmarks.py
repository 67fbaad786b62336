"""The paper's comparison script runs end to end (tiny settings; needs ../shared/data)."""
import os
import subprocess
import sys

import pytest
import torch

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
        "--variants", "control", "cayley+pls", "nt", "nt+epochs-2", "at", "silu", "trades-2", "blend-0.5+trades-2", "distill",
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
            "| trades-2 | 1 |", "| blend-0.5+trades-2 | 1 |", "| distill | 1 |")
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
