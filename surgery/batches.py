"""Images to measure, as a stream of batches with memory flat in their number.

:func:`surgery.evaluate` takes an ``(N, 3, H, W)`` tensor, a map-style ``Dataset`` whose
items are an image or ``(image, score, ...)``, or a ``DataLoader`` (its dataset, batch size
and workers are used; images are visited in the dataset's order). Images may differ in
size: each batch holds consecutive images of one size. Batches are cut from the
requested indices in order, ``batch_size`` at a time, so a batch holds the same images
whatever the number of processes; under a process group, rank ``r`` of ``W`` takes
every ``W``-th batch from the ``r``-th (as the batches of a ``DistributedSampler``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_convert

from . import distributed
from .scoring import check_images

__all__ = ["ImageData", "Batch", "ImageStream"]

ImageData = Union[torch.Tensor, Dataset, DataLoader]


@dataclass
class Batch:
    """Images of one size: their ``positions`` in the requested index list, their ``indices``
    in the data, and the scores the data carries (NaN for an item without one)."""

    positions: torch.Tensor
    indices: torch.Tensor
    images: torch.Tensor
    scores: torch.Tensor


def _as_is(chunk):
    return chunk


class _Chunks(Dataset):
    """Item ``j``: the items of the ``j``-th batch of indices, loaded (by a worker when there are any)."""

    def __init__(self, dataset: Dataset, chunks: list[list[int]]):
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, j: int) -> list:
        return [default_convert(self.dataset[i]) for i in self.chunks[j]]


def _image_and_score(item, index: int, what: str) -> tuple[torch.Tensor, float]:
    image, score = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) and item else (item, None)
    if not torch.is_tensor(image) or image.ndim != 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(
            f"{what} {index} of the dataset is {shape}, not a (3, H, W) image tensor: its items must be an image "
            "or (image, score)"
        )
    if score is None:
        return image, float("nan")
    try:
        value = torch.as_tensor(score, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        value = None
    if value is None or value.numel() != 1:
        raise ValueError(f"item {index} of the dataset has {score!r} as its score, not one number: items are (image, score)")
    return image, float(value)


class ImageStream:
    """``batches(indices)`` of the images in ``data`` (see the module docstring)."""

    def __init__(self, data: ImageData, batch_size: int = 8, num_workers: int = 0, what: str = "image"):
        self.what, self.tensor, self.dataset = what, None, None
        if isinstance(data, DataLoader):
            batch_size, num_workers, data = data.batch_size or batch_size, data.num_workers, data.dataset
        if torch.is_tensor(data):
            self.tensor = check_images(data, what=what)
        elif isinstance(data, IterableDataset) or not isinstance(data, Dataset) or not hasattr(data, "__len__"):
            raise TypeError(
                f"expected {what}s as an (N, 3, H, W) tensor, a map-style Dataset (with len and indexing, so images "
                f"can be picked and shared out) or a DataLoader of one, got {type(data).__name__}"
            )
        else:
            self.dataset = data
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        if len(self) == 0:
            raise ValueError(f"got no {what}s: pass at least one image")

    def __len__(self) -> int:
        return self.tensor.shape[0] if self.tensor is not None else len(self.dataset)

    def _chunks(self, indices, shard: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(positions, indices) of each batch before images are split by size; this rank's with ``shard``."""
        indices = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        chunks = list(zip(torch.arange(indices.numel()).split(self.batch_size), indices.split(self.batch_size)))
        return chunks[distributed.rank() :: distributed.world_size()] if shard else chunks

    def share(self, indices: Sequence[int] | torch.Tensor | None = None) -> int:
        """How many of the images at ``indices`` this rank's batches hold."""
        return sum(index.numel() for _, index in self._chunks(indices, shard=True))

    def batches(self, indices: Sequence[int] | torch.Tensor | None = None, shard: bool = True) -> Iterator[Batch]:
        """The images at ``indices`` (all by default), ``batch_size`` at a time and one size per
        batch; with ``shard``, only this rank's batches."""
        chunks = self._chunks(indices, shard)
        if self.tensor is not None:
            for place, index in chunks:
                yield Batch(place, index, self.tensor[index], torch.full((index.numel(),), float("nan"), dtype=torch.float64))
            return
        loader = DataLoader(
            _Chunks(self.dataset, [index.tolist() for _, index in chunks]), batch_size=None,
            num_workers=self.num_workers, collate_fn=_as_is,
        )
        for (place, index), items in zip(chunks, loader):
            yield from self._by_size(place, index, items)

    def _by_size(self, place: torch.Tensor, index: torch.Tensor, items: list) -> Iterator[Batch]:
        pairs = [_image_and_score(item, int(i), self.what) for item, i in zip(items, index)]
        start = 0
        while start < len(pairs):
            stop = start + 1
            while stop < len(pairs) and pairs[stop][0].shape == pairs[start][0].shape:
                stop += 1
            images = torch.stack([image for image, _ in pairs[start:stop]])
            check_images(images, index[start:stop].tolist(), self.what)
            scores = torch.tensor([score for _, score in pairs[start:stop]], dtype=torch.float64)
            yield Batch(place[start:stop], index[start:stop], images, scores)
            start = stop

    def images(self, indices: Sequence[int] | torch.Tensor | None = None) -> "ImageBatches":
        """A re-iterable of the image batches at ``indices`` on every rank (e.g. to fit a UAP)."""
        return ImageBatches(self, indices)


class ImageBatches:
    """Iterating gives the image tensors of :meth:`ImageStream.batches`, unsharded, each time anew."""

    def __init__(self, stream: ImageStream, indices):
        self.stream, self.indices = stream, indices

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (batch.images for batch in self.stream.batches(self.indices, shard=False))
