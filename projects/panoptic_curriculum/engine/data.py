"""A training data stream that is a pure function of (seed, position): resuming at iteration
``i`` yields exactly the batches an uninterrupted run would have seen from ``i`` on,
augmentations included."""

import itertools
import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Sampler

from detectron2.utils import comm

__all__ = ["ResumableTrainingSampler", "PositionalDataset", "SeededMapper"]


class ResumableTrainingSampler(Sampler):
    """Infinite stream of ``shuffle(range(size)) + shuffle(range(size)) + ...`` (seeded),
    sharded across processes like detectron2's ``TrainingSampler``, starting at global
    stream position ``start``.

    It yields keys ``position * size + index`` so that the mapper knows each sample's stream
    position (for per-sample seeding); :class:`PositionalDataset` decodes them.
    """

    def __init__(self, size: int, seed: int, start: int = 0):
        if size <= 0:
            raise ValueError(f"the training set is empty (size={size})")
        self._size, self._seed, self._start = size, int(seed), int(start)
        self._rank, self._world = comm.get_rank(), comm.get_world_size()

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        skipped_epochs = self._start // self._size
        for _ in range(skipped_epochs):  # advance the generator past whole epochs
            torch.randperm(self._size, generator=g)

        def stream():
            position = skipped_epochs * self._size
            while True:
                for index in torch.randperm(self._size, generator=g).tolist():
                    yield position * self._size + index
                    position += 1

        offset = self._start - skipped_epochs * self._size + self._rank
        yield from itertools.islice(stream(), offset, None, self._world)


class PositionalDataset(torch.utils.data.Dataset):
    """Wraps a list of dataset dicts; ``ds[position * size + index]`` returns
    ``(position, dicts[index])``."""

    def __init__(self, dicts):
        self._dicts = dicts

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, key: int):
        position, index = divmod(int(key), len(self._dicts))
        return position, self._dicts[index]


class SeededMapper:
    """Runs ``mapper`` on ``(position, dict)`` with Python, NumPy and torch RNGs seeded from
    ``(seed, position)``, restoring the caller's RNG states afterwards."""

    def __init__(self, mapper: Callable, seed: int):
        self.mapper, self.seed = mapper, int(seed)

    def __call__(self, item):
        position, dataset_dict = item
        sample_seed = (self.seed * 1_000_003 + position) % (2**31 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            torch.manual_seed(sample_seed)
            try:
                return self.mapper(dataset_dict)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
