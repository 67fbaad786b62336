"""Run by tests/test_streaming.py under torchrun: evaluate with no process group initialised;
each rank writes the table it returned."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_streaming import sharded_table  # noqa: E402

folder = sys.argv[1]
table = sharded_table(os.path.join(folder, "cache"))
with open(os.path.join(folder, f"rank{os.environ['RANK']}.json"), "w") as f:
    f.write(table.to_json())
