"""Run by tests/test_calibration.py under torchrun with a gloo process group: calibrate_blend
twice with one cache folder (the second call answered from the first's file on every rank, or
measured on every rank: never one rank waiting in a collective the others skip); each rank
writes its two reports."""
import copy
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from surgery.calibration import calibrate_blend  # noqa: E402
from tests.models import SmallCNN  # noqa: E402
from tests.test_recipes import cluster_data  # noqa: E402

folder = sys.argv[1]
dist.init_process_group("gloo")
torch.manual_seed(0)
original = SmallCNN()
images, targets = cluster_data(16, 16)
options = {"keeps": [0.5, 1.0], "attack_images": 4, "cache_dir": os.path.join(folder, "cache")}
reports = [str(calibrate_blend(original, copy.deepcopy(original), (images, targets), t, **options)) for t in (0.99, 0.5)]
with open(os.path.join(folder, f"rank{dist.get_rank()}.txt"), "w") as f:
    f.write("\n---\n".join(reports))
dist.destroy_process_group()
