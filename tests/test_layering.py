"""The package's directions (docs in ARCHITECTURE): which modules never import which."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "surgery"


def _imported(path: pathlib.Path) -> set[str]:
    """The surgery modules a file imports, as dotted names under the package (``hardening``, ``attacks.base``)."""
    package = list(path.relative_to(PACKAGE).parts[:-1])  # the file's subpackage, [] at the top
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("surgery"):
                target = node.module[len("surgery."):] if node.module != "surgery" else ""
            else:
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}".lstrip(".") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name[len("surgery."):] for a in node.names if a.name.startswith("surgery."))
    return found


def _files(*names: str) -> list[pathlib.Path]:
    files = []
    for name in names:
        folder = PACKAGE / name
        files += sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]
    return files


SURGERY = ("hardening", "blocks", "ortho", "pruning", "config", "blockmap")


MEASURING = ("attacks", "metrics", "scoring", "evaluation", "batches", "masking", "distributed")


@pytest.mark.parametrize("path", _files(*MEASURING), ids=lambda p: p.name)
def test_measuring_never_imports_the_surgery(path):
    assert not {m for m in _imported(path) if m.split(".")[0] in SURGERY}


@pytest.mark.parametrize("path", _files("training", "modelfile", "fingerprint"), ids=lambda p: p.name)
def test_the_training_loop_never_imports_hardening_pruning_the_zoo_or_loading(path):
    assert not {m for m in _imported(path) if m.split(".")[0] in SURGERY + ("zoo", "io")}


@pytest.mark.parametrize("path", _files("ortho"), ids=lambda p: p.name)
def test_ortho_is_a_layer_library_of_its_own(path):
    assert all(m.startswith("ortho") for m in _imported(path)), _imported(path)
