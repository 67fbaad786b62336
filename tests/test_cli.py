"""The command line: harden a zoo model, describe and locate it."""
import argparse
import subprocess
import sys

import pytest
import torch

import surgery
from surgery.cli import _model_names, main


def test_harden_then_describe(tmp_path, capsys):
    out = tmp_path / "hardened.pt"
    arguments = ["harden", "linearity", "--random-weights", "--model-arg", "arch=resnet18", "--input-size", "3", "64", "64"]
    assert main(arguments + ["--out", str(out)]) == 0
    assert out.exists() and "saved to" in capsys.readouterr().out
    assert main(["describe", str(out)]) == 0
    assert "before features.7" in capsys.readouterr().out


def test_locate_lists_blocks(capsys):
    assert main(["locate", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--input-size", "3", "64", "64"]) == 0
    assert "backbone.layer4" in capsys.readouterr().out


def test_models_are_listed_by_filter(capsys):
    assert main(["models", "default*"]) == 0
    assert capsys.readouterr().out.split() == ["default", "default-lite2", "default-robust"]
    assert main(["models", "--pretrained"]) == 0
    assert "linearity" not in capsys.readouterr().out.split()


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "surgery", "--help"], capture_output=True, text=True, check=True)
    assert "harden" in result.stdout


def test_eval_writes_tables_and_plots(tmp_path, capsys):
    folder, _ = _photos(tmp_path, 4)
    out = tmp_path / "res.csv"
    code = main([
        "eval", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--images", str(folder),
        "--csv", str(tmp_path / "scores.csv"),
        "--score-column", "mos", "--input-size", "3", "32", "32", "--attacks", "pgd-1", "--out", str(out),
        "--plots", str(tmp_path / "plots"),
    ])
    assert code == 0
    assert out.exists() and (tmp_path / "res.md").exists() and (tmp_path / "res.json").exists()
    assert (tmp_path / "plots" / "abs_gain_vs_eps.png").exists() and (tmp_path / "plots" / "tradeoff.png").exists()
    assert "pgd-1 abs_gain_auc" in capsys.readouterr().out


def test_eval_under_torchrun_writes_one_process_table_once(tmp_path):
    import json
    import os

    folder, _ = _photos(tmp_path, 6)
    arguments = [
        "eval", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--images", str(folder),
        "--csv", str(tmp_path / "scores.csv"), "--score-column", "mos", "--input-size", "3", "32", "32",
        "--attacks", "pgd-2-rs", "--protocol", "msu", "--attack-images", "5", "--batch-size", "2",
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "surgery"]
    run = subprocess.run(
        launcher + arguments + ["--out", str(tmp_path / "two" / "res.json")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    assert main(arguments + ["--out", str(tmp_path / "one" / "res.json")]) == 0
    two, one = (json.loads((tmp_path / d / "res.json").read_text()) for d in ("two", "one"))
    assert two == one and one["summaries"][0]["attack_n"] == 5
    assert [r["eps"] for r in one["rows"][1:]] == [2, 4, 8, 16] and "(evaluated images)" in one["summaries"][0]["score_range"]


def test_demo_halves_are_disjoint_photo_parts():
    import torch

    from surgery.demo import _halves

    left, right = _halves((32, 32))
    assert left.shape == right.shape == (6, 3, 32, 32)
    assert not torch.allclose(left, right)


BAD_INVOCATIONS = [  # (arguments, exit code, what the one line must say)
    (["harden", "nosuch", "--out", "x.pt"], 2, "unknown model 'nosuch'"),
    (["harden", "timm-iqa", "--model-arg", "backbone", "--out", "x.pt"], 2, "KEY=VALUE"),
    (["harden", "timm-iqa", "--random-weights", "--model-arg", "colour=red", "--out", "x.pt"], 2, "does not take --model-arg"),
    (["harden", "timm-iqa", "--ortho", "householder", "--out", "x.pt"], 2, "invalid choice"),
    (["harden", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--input-size", "3", "64", "64",
      "--position", "layer9", "--out", "x.pt"], 2, "--position: position 'layer9' is not a module"),
    (["harden", "default", "--input-size", "3", "64", "64", "--position", "99", "--out", "x.pt"], 2, "position 99 does not"),
    (["harden", "linearity", "--out", "x.pt"], 2, "no weights ship for 'linearity'"),
    (["harden", "default", "--amount", "0.2", "--out", "x.pt"], 2, "--amount sets how much --prune removes"),
    (["harden", "default", "--prune", "l2", "--amount", "1.5", "--out", "x.pt"], 2, "--amount: expected a fraction"),
    (["harden", "default", "--model-arg", "pretrained=maybe", "--out", "x.pt"], 2, "pretrained must be true or false"),
    (["harden", "default", "--random-weights", "--checkpoint", "c.pt", "--out", "x.pt"], 2, "--random-weights contradicts"),
    (["models", "zzz"], 1, "no model matches 'zzz'"),
    (["eval", "default", "--images", ".", "--out", "res.txt"], 2, "--out: expected a path ending in .csv"),
    (["eval", "default", "default", "--images", "."], 2, "given more than once"),
    (["eval", "default", "default-robust", "--checkpoint", "c.pt", "--images", "."], 2, "--checkpoint loads into one"),
    (["describe", "no-records.pt"], 1, "lacks model, harden, state_dict"),
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
    torch.save({"format": "surgery.model.v2"}, tmp_path / "no-records.pt")
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


def _photos(tmp_path, count=4, size=(20, 24)):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,mos"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i + 1}")
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    return folder, tmp_path / "scores.csv"


@pytest.mark.parametrize("name", ["default", "default-robust", "default-lite2", "resnet18-scratch"])
def test_zoo_models_with_shipped_weights_load_them(name, monkeypatch):
    """`surgery harden/eval default` used to build the model with random weights."""
    from surgery.cli import _zoo_model

    model, random_weights = _zoo_model(name, {})
    shipped = surgery.create_model(name, pretrained=True)
    assert not random_weights
    for key, value in shipped.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    _, random_weights = _zoo_model(name, {}, random_weights=True)
    assert random_weights


def test_harden_default_saves_the_trained_model(tmp_path):
    out = tmp_path / "h.pt"
    assert main(["harden", "default", "--input-size", "3", "64", "64", "--out", str(out)]) == 0
    hardened = surgery.load(out)
    shipped = surgery.create_model("default", pretrained=True)
    for key, value in shipped.head.state_dict().items():
        assert torch.equal(hardened.head.state_dict()[key], value), key


def test_eval_says_when_a_model_has_random_weights(tmp_path, capsys):
    folder, scores = _photos(tmp_path)
    out = tmp_path / "res.json"
    code = main([
        "eval", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--images", str(folder), "--csv",
        str(scores), "--score-column", "mos", "--input-size", "3", "32", "32", "--attacks", "pgd-1", "--out", str(out),
    ])
    captured = capsys.readouterr()
    assert code == 0
    assert "timm-iqa has random weights" in captured.err
    assert "timm-iqa (random weights)" in captured.out


def test_eval_keeps_models_with_the_same_file_name_apart(tmp_path, capsys):
    """`surgery eval runA/best.pt runB/best.pt` used to print one row named "best"."""
    folder, scores = _photos(tmp_path)
    for run in ("runA", "runB"):
        (tmp_path / run).mkdir()
        surgery.save(surgery.create_model("default", pretrained=True), tmp_path / run / "best.pt")
    out = tmp_path / "res.csv"
    code = main([
        "eval", str(tmp_path / "runA" / "best.pt"), str(tmp_path / "runB" / "best.pt"), "--images", str(folder), "--csv",
        str(scores), "--score-column", "mos", "--input-size", "3", "32", "32", "--attacks", "pgd-1", "--out", str(out),
    ])
    assert code == 0
    rows = out.read_text().splitlines()
    assert any(row.startswith("runA/best,") for row in rows) and any(row.startswith("runB/best,") for row in rows)


@pytest.mark.parametrize("specs,names", [
    (["default", "a/best.pt"], ["default", "best"]),
    (["x/runA/best.pt", "x/runB/best.pt"], ["runA/best", "runB/best"]),
    (["a/b/m.pt", "c/b/m.pt"], ["a/b/m", "c/b/m"]),
    (["m.pt", "m.pth"], ["m.pt", "m.pth"]),
])
def test_model_names_tell_files_apart(specs, names):
    assert _model_names(specs) == names


def test_robustify_calibrates_saves_and_round_trips_through_load(tmp_path, monkeypatch, capsys):
    from surgery.data import ImageFolder

    folder, table = _photos(tmp_path, 16)
    with torch.random.fork_rng():  # the MOS: the random model's own scores, which it ranks well (the calibration needs that)
        torch.manual_seed(0)
        model = surgery.create_model("timm-iqa", pretrained=False, backbone="resnet18").eval()
    photos = ImageFolder(folder, table, size=(32, 32))
    with torch.no_grad():
        own = model(torch.stack([photos[i][0] for i in range(len(photos))]))
    table.write_text("image,mos\n" + "".join(f"{i}.png,{score:.6f}\n" for i, score in enumerate(own.tolist())))
    saved = {}
    save = surgery.save
    monkeypatch.setattr(surgery, "save", lambda model, path: saved.update(model=model) or save(model, path))
    out = tmp_path / "robust.pt"
    code = main([
        "robustify", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--images", str(folder),
        "--csv", str(table), "--score-column", "mos", "--input-size", "3", "32", "32", "--val-fraction", "0.25",
        "--target", "0.5", "--epochs", "1", "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calibrated on validation" in printed and "| keep | head keep | val SROCC |" in printed and "saved to" in printed
    loaded = surgery.load(out).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), saved["model"].eval()(images))


def _robustify_keywords(tmp_path, monkeypatch, extra: list[str]) -> dict:
    """The keywords `surgery robustify ... EXTRA` calls robustify with (a stand-in that trains nothing)."""
    from surgery.training import FinetuneResult

    folder, table = _photos(tmp_path, 8)
    called = {}
    monkeypatch.setattr(surgery, "robustify", lambda model, train, val, recipe, **kw: called.update(kw) or (model, FinetuneResult()))
    code = main([
        "robustify", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--images", str(folder),
        "--csv", str(table), "--score-column", "mos", "--input-size", "3", "32", "32", *extra, "--out", str(tmp_path / "r.pt"),
    ])
    assert code == 0
    return called


@pytest.mark.parametrize("extra,target", [([], "recipe"), (["--target", "none"], None), (["--target", "0.95"], 0.95)])
def test_robustify_passes_the_target_it_was_given(tmp_path, monkeypatch, extra, target):
    """No --target: the recipe's (robustify calibrates when there is validation data); none: the fixed blend."""
    assert _robustify_keywords(tmp_path, monkeypatch, ["--val-fraction", "0.25", *extra])["target"] == target


@pytest.mark.parametrize("extra,options", [
    ([], {}),
    (["--epochs", "2", "--lr", "0.001"], {"epochs": 2, "lr": 0.001}),
    (["--schedule", "constant", "--batch-size", "4"], {"schedule": "constant", "batch_size": 4}),
])
def test_robustify_passes_the_finetune_options_it_was_given(tmp_path, monkeypatch, extra, options):
    """Only the options given reach robustify: the others stay the recipe's."""
    called = _robustify_keywords(tmp_path, monkeypatch, extra)
    assert {k: v for k, v in called.items() if k in ("epochs", "lr", "schedule", "batch_size")} == options


def test_robustify_refuses_an_unknown_schedule(tmp_path, capsys):
    folder, table = _photos(tmp_path, 4)
    with pytest.raises(SystemExit) as exit_:
        main(["robustify", "default", "--images", str(folder), "--csv", str(table), "--score-column", "mos",
              "--schedule", "linear", "--out", str(tmp_path / "r.pt")])
    assert exit_.value.code == 2 and "invalid choice: 'linear'" in capsys.readouterr().err


@pytest.mark.parametrize("debug", [False, True])
def test_a_warning_is_one_line_as_the_errors_are(tmp_path, monkeypatch, capsys, debug):
    """robustify without validation data warns that it cannot calibrate: one line naming it, not
    Python's two with the library's file and line (--debug keeps those)."""
    import warnings

    from surgery.training import FinetuneResult

    def robustify(model, train, val, recipe, **kw):
        warnings.warn("robustify: no validation data,\nthe blend cannot be calibrated", UserWarning)
        return model, FinetuneResult()

    folder, table = _photos(tmp_path, 4)
    monkeypatch.setattr(surgery, "robustify", robustify)
    arguments = ["robustify", "timm-iqa", "--random-weights", "--model-arg", "backbone=resnet18", "--images", str(folder),
                 "--csv", str(table), "--score-column", "mos", "--input-size", "3", "32", "32", "--out", str(tmp_path / "r.pt")]
    if debug:
        with pytest.warns(UserWarning, match="no validation data"):
            assert main(["--debug"] + arguments) == 0
    else:
        assert main(arguments) == 0
    err = capsys.readouterr().err
    assert ("surgery: warning: robustify: no validation data, the blend cannot be calibrated\n" in err) != debug


@pytest.mark.parametrize("value,parsed", [("none", None), ("None", None), ("recipe", "recipe"), ("0.95", 0.95), ("1", 1.0)])
def test_target_option_reads_a_share_recipe_or_none(value, parsed):
    from surgery.cli import _target

    assert _target(value) == parsed


@pytest.mark.parametrize("value", ["nnone", "0", "1.5", "-0.2"])
def test_target_option_names_what_it_takes(value):
    from surgery.cli import _target

    with pytest.raises(argparse.ArgumentTypeError, match="'recipe' or 'none'"):
        _target(value)


@pytest.mark.parametrize("extra,message", [
    (["--target", "0.99"], "--target chooses the blend on validation images"),
    (["--val-csv", "v.csv", "--val-fraction", "0.2"], "pass one"),
    (["--val-images", "v/", "--val-fraction", "0.2"], "--val-images is the folder of --val-csv's images"),
    (["--val-csv", "{csv}"], "--val-csv is the training CSV"),
    (["{saved}", "--checkpoint", "w.pth"], "--checkpoint set up zoo models"),
    (["{saved}", "--random-weights", "--model-arg", "backbone=resnet18"], "--model-arg and --random-weights set up zoo models"),
])
def test_robustify_refuses_what_it_cannot_do(tmp_path, capsys, extra, message):
    """Each would run and silently do something else: choose the blend on training images, or
    train a saved model's own weights instead of the checkpoint named."""
    folder, table = _photos(tmp_path, 4)
    saved = tmp_path / "saved.pt"
    saved.write_bytes(b"never read: the flags are refused first")
    model = str(saved) if "{saved}" in extra else "default"
    extra = [a.format(csv=table) for a in extra if a != "{saved}"]
    arguments = ["robustify", model, "--images", str(folder), "--csv", str(table), "--score-column", "mos", "--out", "r.pt"]
    assert main(arguments + extra) == 2
    assert message in capsys.readouterr().err
