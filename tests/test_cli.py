"""The command line: harden a zoo model, describe and locate it."""
import subprocess
import sys

from surgery.cli import main


def test_harden_then_describe(tmp_path, capsys):
    out = tmp_path / "hardened.pt"
    assert main(["harden", "linearity", "--model-arg", "arch=resnet18", "--input-size", "3", "64", "64", "--out", str(out)]) == 0
    assert out.exists() and "saved to" in capsys.readouterr().out
    assert main(["describe", str(out)]) == 0
    assert "before features.7" in capsys.readouterr().out


def test_locate_lists_blocks(capsys):
    assert main(["locate", "timm-iqa", "--model-arg", "backbone=resnet18", "--input-size", "3", "64", "64"]) == 0
    assert "backbone.layer4" in capsys.readouterr().out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "surgery", "--help"], capture_output=True, text=True, check=True)
    assert "harden" in result.stdout


def test_eval_writes_tables_and_plots(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,mos"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i + 1}")
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "res.csv"
    code = main([
        "eval", "timm-iqa", "--model-arg", "backbone=resnet18", "--images", str(folder), "--csv", str(tmp_path / "scores.csv"),
        "--score-column", "mos", "--size", "32", "32", "--attacks", "pgd-1", "--out", str(out), "--plots", str(tmp_path / "plots"),
    ])
    assert code == 0
    assert out.exists() and (tmp_path / "res.md").exists() and (tmp_path / "res.json").exists()
    assert (tmp_path / "plots" / "abs_gain_vs_eps.png").exists() and (tmp_path / "plots" / "tradeoff.png").exists()
    assert "pgd-1 abs_gain_auc" in capsys.readouterr().out


def test_demo_halves_are_disjoint_photo_parts():
    import torch

    from surgery.demo import _halves

    left, right = _halves((32, 32))
    assert left.shape == right.shape == (6, 3, 32, 32)
    assert not torch.allclose(left, right)
