"""The README and docs/*.md stay true: every ```python block runs, every relative link resolves.

Each Python block is executed on its own, in a fresh namespace holding what the README says
its snippets assume: ``surgery``, ``torch``, the default model (shipped weights) as ``model``
and small random data (``images``/``mos``, ``val_images``/``val_mos``, ``test_images``/
``test_mos``, ``train``, ``val``), in a temporary working directory. Long runs are cut to
small settings: every fine-tune runs one epoch, attacks run at most 2 steps on 2 eps values.
A block preceded by ``<!-- not-run: reason -->`` is skipped with that reason (pytest's
summary counts them); shell belongs in ```sh blocks, which are not run, but the
``surgery ...`` command lines in them must parse.
"""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import torch

import surgery

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+)\s*(?P<lang>[\w+-]*)")


def code_blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(first line, language, code, not-run reason or None) of every fenced block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index].strip())
        if not opening:
            index += 1
            continue
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marked = NOT_RUN.match(before)
        end = index + 1
        while end < len(lines) and lines[end].strip() != opening["fence"]:
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path.name}:{index + 1}: code block never closed")
        code = "\n".join(lines[index + 1 : end])
        blocks.append((index + 1, opening["lang"].lower(), code, marked["reason"] if marked else None))
        index = end + 1
    return blocks


PYTHON_BLOCKS = [
    pytest.param(f"{path.relative_to(ROOT)}:{line}", code, reason, id=f"{path.relative_to(ROOT)}:{line}")
    for path in DOCUMENTS
    for line, lang, code, reason in code_blocks(path)
    if lang in ("python", "py")
]


def test_the_readme_has_python_blocks():
    assert sum(1 for p in PYTHON_BLOCKS if p.id.startswith("README.md")) >= 6


def test_blocks_are_marked():
    """Every fenced block says what it is, so a Python snippet cannot hide in an unmarked fence."""
    for path in DOCUMENTS:
        for line, lang, code, _ in code_blocks(path):
            if not lang:
                # the layout tree is the one plain block: no Python in it
                assert not re.search(r"^\s*(import |from \S+ import |\w+ = surgery\.)", code, re.M), (
                    f"{path.name}:{line}: Python in a block without a language; mark it ```python"
                )


# --- running the Python blocks ------------------------------------------------------------


def _short_attacks(specs):
    """The same attacks with at most 2 steps each (names kept apart from the full-size ones)."""
    if isinstance(specs, (str, surgery.attacks.Attack)):
        specs = [specs]
    short = []
    for spec in specs:
        if isinstance(spec, str):
            key = spec.lower()
            key = re.sub(r"^apgd(-\d+)?$", "apgd-2", key)
            key = re.sub(r"^pgd-\d+-rs$", "pgd-2-rs", key)
            key = re.sub(r"^paper-pgd-\d+$", "paper-pgd-1", key)
            key = re.sub(r"^pgd-(\d+)$", lambda m: f"pgd-{min(int(m[1]), 2)}", key)
            key = re.sub(r"^square-\d+$", "square-4", key)
            spec = key
        short.append(spec)
    return short


@pytest.fixture(scope="module")
def default_model():
    return surgery.create_model("default", pretrained=True)


@pytest.fixture
def namespace(default_model, monkeypatch, tmp_path):
    """What the snippets assume, at small sizes, with the slow calls cut down."""
    import surgery.evaluation
    import surgery.recipes
    import surgery.training

    full_finetune = surgery.training.finetune

    def finetune(*args, **kwargs):
        kwargs.update(epochs=1, progress=False)
        return full_finetune(*args, **kwargs)

    for module in (surgery, surgery.training, surgery.recipes):
        monkeypatch.setattr(module, "finetune", finetune)
    full_resolve = surgery.evaluation.resolve_attacks
    monkeypatch.setattr(
        surgery.evaluation,
        "resolve_attacks",
        lambda specs, eps_grid=surgery.evaluation.EPS_GRID, seed=None: full_resolve(_short_attacks(specs), tuple(eps_grid)[:2], seed),
    )
    monkeypatch.chdir(tmp_path)

    generator = torch.Generator().manual_seed(0)
    data = {}
    for prefix in ("", "val_", "test_"):
        data[f"{prefix}images"] = torch.rand(8, 3, 48, 48, generator=generator)
        data[f"{prefix}mos"] = torch.rand(8, generator=generator)
    return {
        "__name__": "readme",
        "surgery": surgery,
        "torch": torch,
        "model": copy.deepcopy(default_model),
        "train": (data["images"], data["mos"]),
        "val": (data["val_images"], data["val_mos"]),
        **data,
    }


@pytest.mark.parametrize("where,code,reason", PYTHON_BLOCKS)
def test_python_block_runs(where, code, reason, namespace):
    if reason is not None:
        pytest.skip(f"{where} not-run: {reason}")
    exec(compile(code, where, "exec"), namespace)


# --- the rest of what the documents point at ---------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's id for a Markdown heading."""
    text = re.sub(r"[`*]|\[|\]\([^)]*\)", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    inside, anchors = False, set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            anchors.add(_anchor(line.lstrip("#")))
    return anchors


def _prose(path: Path) -> str:
    """The document without its code blocks."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    """Relative links and images point at files that exist, and #anchors at their headings."""
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path)):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            bad.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
            bad.append(f"{target}: no heading with that anchor in {linked.name}")
    assert not bad, f"{path.name}: " + "; ".join(bad)


def _commands(prefix: str) -> list[tuple[str, str]]:
    """(document:line, command) for every shell line starting with ``prefix``, continuations joined."""
    found = []
    for path in DOCUMENTS:
        for line, lang, code, _ in code_blocks(path):
            if lang not in ("sh", "bash", "shell", "console"):
                continue
            joined = re.sub(r"\\\n\s*", " ", code)
            for offset, text in enumerate(joined.splitlines()):
                text = text.strip()
                if text.startswith(prefix):
                    found.append((f"{path.name}:{line + 1 + offset}", text))
    return found


def test_cli_examples_parse():
    """Every `surgery ...` line of the documents is a command line the CLI accepts."""
    from surgery import cli

    parser = getattr(cli, "_parser", None)
    if parser is None:
        pytest.skip("surgery.cli has no _parser() to check the examples with")
    commands = _commands("surgery ")
    assert commands
    for where, command in commands:
        try:
            parser().parse_args(shlex.split(command, comments=True)[1:])
        except SystemExit as exit:
            raise AssertionError(f"{where}: the CLI refuses {command!r} (exit {exit.code})") from None


def test_make_targets_and_scripts_exist():
    """`make X` targets are in the Makefile, `python benchmarks/X.py` scripts exist."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for where, command in _commands("make "):
        target = shlex.split(command, comments=True)[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: no make target {target!r}"
    for where, command in _commands("python "):
        script = shlex.split(command, comments=True)[1]
        if script.endswith(".py"):
            assert (ROOT / script).is_file(), f"{where}: no script {script}"
