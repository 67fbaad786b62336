"""Run by tests/test_finetune.py under torchrun: finetune with no process group initialised;
each rank writes the rank and world size the run saw, and its final weights."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from surgery import training  # noqa: E402
from tests.models import TinyIQA  # noqa: E402
from tests.test_finetune import toy_split  # noqa: E402

seen = {}
validate = training._validate


def recording_validate(*args, **kwargs):
    seen["rank"], seen["world"] = dist.get_rank(), dist.get_world_size()
    return validate(*args, **kwargs)


training._validate = recording_validate
folder = sys.argv[1]
torch.manual_seed(0)
model = TinyIQA()
training.finetune(model, *toy_split(), epochs=2, checkpoint_dir=folder, progress=False)
seen["initialised_after"] = dist.is_initialized()
rank = int(os.environ["RANK"])
with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
    json.dump(seen, f)
torch.save(model.state_dict(), os.path.join(folder, f"rank{rank}.pt"))
