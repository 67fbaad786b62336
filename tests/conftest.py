import importlib.util

import pytest
import torch

HAS_PYIQA = importlib.util.find_spec("pyiqa") is not None
requires_pyiqa = pytest.mark.skipif(not HAS_PYIQA, reason="optional extra: pip install 'surgery[pyiqa]'")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
