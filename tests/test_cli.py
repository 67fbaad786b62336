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
