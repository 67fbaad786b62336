"""The command line: harden a zoo model, describe and locate it."""
import subprocess
import sys

import pytest

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


def test_models_are_listed_by_filter(capsys):
    assert main(["models", "default*"]) == 0
    assert capsys.readouterr().out.split() == ["default", "default-robust"]
    assert main(["models", "--pretrained"]) == 0
    assert "linearity" not in capsys.readouterr().out.split()


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
        "--score-column", "mos", "--input-size", "3", "32", "32", "--attacks", "pgd-1", "--out", str(out),
        "--plots", str(tmp_path / "plots"),
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


BAD_INVOCATIONS = [  # (arguments, exit code, what the one line must say)
    (["harden", "nosuch", "--out", "x.pt"], 2, "unknown model 'nosuch'"),
    (["harden", "timm-iqa", "--model-arg", "backbone", "--out", "x.pt"], 2, "KEY=VALUE"),
    (["harden", "timm-iqa", "--model-arg", "colour=red", "--out", "x.pt"], 2, "does not take --model-arg"),
    (["harden", "timm-iqa", "--ortho", "householder", "--out", "x.pt"], 2, "invalid choice"),
    (["harden", "timm-iqa", "--model-arg", "backbone=resnet18", "--input-size", "3", "64", "64", "--position", "layer9",
      "--out", "x.pt"], 1, "layer9"),
    (["describe", "missing.pt"], 1, "no saved model"),
    (["describe", "not-a-model.pt"], 1, "not a readable weights-only surgery file"),
    (["eval", "default", "--images", "photos"], 1, "image folder 'photos' does not exist"),
    (["eval", "default", "--images", ".", "--limit", "0"], 2, "--limit: expected a whole number >= 1"),
    (["eval", "default", "--images", ".", "--limit", "-1"], 2, "--limit: expected a whole number >= 1"),
    (["eval", "default", "--images", ".", "--attacks", "cw"], 2, "unknown attack 'cw'"),
    (["eval", "default", "--images", ".", "--input-size", "3", "0", "8"], 2, "--input-size"),
    (["eval", "default", "--images", ".", "--input-size", "1", "8", "8"], 2, "--input-size"),
    (["eval", "default", "--images", ".", "--csv", "scores.csv"], 1, "score table 'scores.csv' does not exist"),
]


@pytest.mark.parametrize("arguments,code,says", BAD_INVOCATIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_user_mistakes_get_one_line_and_an_exit_code(arguments, code, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SURGERY_DEBUG", raising=False)
    (tmp_path / "not-a-model.pt").write_text("text")
    try:
        returned = main(arguments)
    except SystemExit as exit_:  # argparse's own usage errors
        returned = exit_.code
    err = capsys.readouterr().err
    assert returned == code
    assert "Traceback" not in err
    assert says in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        main(["--debug", "describe", "missing.pt"])
    with pytest.raises(FileNotFoundError):
        main(["describe", "missing.pt", "--debug"])
    monkeypatch.setenv("SURGERY_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["describe", "missing.pt"])


def test_harden_prunes_and_builds_the_paper_code_block(tmp_path, capsys):
    out = tmp_path / "paper.pt"
    code = main(["harden", "default", "--input-size", "3", "192", "256", "--paper-code-block", "--prune", "l2", "--out", str(out)])
    assert code == 0
    shown = capsys.readouterr().out
    assert "max pool -> paper" in shown and "l2 pruning" in shown and "frozen" in shown
