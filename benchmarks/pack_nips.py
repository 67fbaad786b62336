"""The NIPS 2017 references at the benchmarks' 224x224, rounded to 8 bits and stored as lossless
WebP: 35 MB instead of the 89 MB of the 299x299 PNGs, small enough to travel with the working
tree to a GPU machine. The benchmarks read the copy with ``--data <out>`` (``NIPS2017`` reads any
image extension); it differs from resizing the PNGs on the fly only by the rounding (at most
0.5/255 a pixel), so its pseudo-MOS labels need their own cache (``--labels``).

    python benchmarks/pack_nips.py [--data ../shared/data/nips2017] [--out .cache/nips224]
"""
from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
from PIL import Image

from surgery.data import NIPS2017

from train_default import SHARED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SHARED)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default=".cache/nips224")
    args = parser.parse_args()
    nips = NIPS2017(args.data, size=(args.size, args.size))
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    shutil.copyfile(os.path.join(args.data, "images.csv"), os.path.join(args.out, "images.csv"))
    for index, image_id in enumerate(nips.ids):
        pixels = (nips[index] * 255).round().byte().permute(1, 2, 0).numpy()
        path = os.path.join(args.out, "images", f"{image_id}.webp")
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, lossless=True, quality=100, method=6)
    print(f"{len(nips)} images in {args.out}")


if __name__ == "__main__":
    main()
