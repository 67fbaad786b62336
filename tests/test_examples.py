"""The example notebooks run top to bottom, offline."""
import glob
import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
    if "pyiqa" in path and importlib.util.find_spec("pyiqa") is None:
        pytest.skip("optional extra: pip install 'surgery[pyiqa]'")
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
