"""The unlabeled source pool: loading it with checks, the seeded walk through it, the mix.

Pure bookkeeping on indices (numpy); decoding lives in ``pseudo_targets``.
"""

import logging
import os
from typing import Optional, Tuple

import numpy as np
from fairseq.data import Dictionary, data_utils
from fairseq.data.indexed_dataset import MMapIndexedDataset

from .errors import ConfigError
from .teacher import first_dictionary_difference

logger = logging.getLogger(__name__)


class PoolError(ConfigError):
    """An unlabeled pool that cannot serve the task."""


def resolve_prefix(path: str, lang: str) -> str:
    """``path`` is a dataset prefix (``DIR/train.en-None.en``) or the directory that
    ``fairseq-preprocess --only-source`` wrote (its train split is used)."""
    if os.path.isdir(path):
        return os.path.join(path, f"train.{lang}-None.{lang}")
    return path[: -len(".bin")] if path.endswith((".bin", ".idx")) else path


def load_pool(path: str, src_dict: Dictionary, lang: str):
    """The pool as an indexed dataset of token ids, checked against the source dictionary."""
    prefix = resolve_prefix(path, lang)
    fix = (f"make it with: fairseq-preprocess --only-source --source-lang {lang} "
           f"--srcdict DATA/dict.{lang}.txt --trainpref RAW_PREFIX --destdir POOL_DIR, "
           f"then pass --unlabeled-data POOL_DIR")
    if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
        raise PoolError(f"--unlabeled-data {path}: no binarized dataset {prefix}.bin/.idx; {fix}")
    dict_file = os.path.join(os.path.dirname(prefix), f"dict.{lang}.txt")
    if os.path.isfile(dict_file):
        diff = first_dictionary_difference(Dictionary.load(dict_file), src_dict, "pool")
        if diff:
            raise PoolError(f"--unlabeled-data {path}: its dictionary {dict_file} differs from the "
                            f"data's dict.{lang}.txt at {diff}; {fix}")
    else:
        logger.warning(f"--unlabeled-data {path}: no {dict_file} beside it; checking token ids only")
    empty = os.path.getsize(prefix + ".bin") == 0  # (numpy cannot mmap an empty file)
    dataset = None if empty else data_utils.load_indexed_dataset(prefix, src_dict)
    if dataset is None or len(dataset) == 0:
        raise PoolError(f"--unlabeled-data {path}: the pool is empty (0 sentences)")
    if isinstance(dataset, MMapIndexedDataset):
        ids = np.frombuffer(dataset._bin_buffer, dtype=dataset._index.dtype)
        if ids.size and int(ids.max()) >= len(src_dict):
            raise PoolError(f"--unlabeled-data {path}: token id {int(ids.max())} is outside the "
                            f"data's source dictionary ({len(src_dict)} symbols); {fix}")
    logger.info(f"unlabeled pool {prefix}: {len(dataset):,} source sentences")
    return dataset


def shard_indices(pool_size: int, per_shard: int, shard: int, seed: int) -> np.ndarray:
    """Pool indices of shard ``shard``: positions ``shard*M .. shard*M+M-1`` of an endless
    walk that visits the whole pool in a seeded random order, then a new order, and so on."""
    positions = np.arange(shard * per_shard, (shard + 1) * per_shard)
    passes, offsets = np.divmod(positions, pool_size)
    out = np.empty_like(positions)
    for p in np.unique(passes):
        with data_utils.numpy_seed(seed, int(p)):
            order = np.random.permutation(pool_size)
        out[passes == p] = order[offsets[passes == p]]
    return out


def pseudo_count(n_labeled: int, n_pseudo: int, ratio: Optional[float]) -> Tuple[int, int]:
    """(labeled, pseudo) examples in an epoch so that pseudo pairs make up ``ratio`` of it;
    ``None``: every pair once. ratio 1 trains on pseudo pairs alone."""
    if ratio is None:
        return n_labeled, n_pseudo
    if ratio >= 1:
        return 0, n_pseudo
    return n_labeled, int(round(ratio / (1 - ratio) * n_labeled))


def resample(n_available: int, count: int, seed: int, epoch: int) -> np.ndarray:
    """``count`` indices into ``n_available`` items: each item ``count // n`` times, then a
    seeded random subset for the remainder."""
    if n_available == 0:
        return np.zeros(0, dtype=np.int64)
    whole, rest = divmod(count, n_available)
    with data_utils.numpy_seed(seed, epoch, 1):
        extra = np.random.permutation(n_available)[:rest]
    return np.concatenate([np.tile(np.arange(n_available), whole), np.sort(extra)])


class OnlineWalk:
    """Which pool sentences each update draws in online mode: a pure function of (seed, update,
    slot), so a restarted run draws what the uninterrupted one would, and slots draw disjoint
    sentences.

    The walk is ``shard_indices``' endless seeded walk, laid out on a token axis: slot ``s`` of
    update ``u`` (``slots_per_update`` slots an update: ranks x micro-batches) owns the tokens
    ``[(u * slots_per_update + s) * T, ... + T)`` and draws the sentences that start there.
    """

    def __init__(self, sizes: np.ndarray, tokens_per_slot: int, slots_per_update: int, seed: int):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.pass_tokens = int(self.sizes.sum())
        self.tokens_per_slot = tokens_per_slot
        self.slots_per_update = slots_per_update
        self.seed = seed
        self._pass = (None, None, None)  # (pass number, order, token offset of each position)

    def _walk_pass(self, p: int):
        if self._pass[0] != p:
            with data_utils.numpy_seed(self.seed, p):
                order = np.random.permutation(len(self.sizes))
            starts = np.cumsum(self.sizes[order]) - self.sizes[order]
            self._pass = (p, order, starts)
        return self._pass[1], self._pass[2]

    def draw(self, update: int, slot: int) -> np.ndarray:
        """Pool indices of the sentences that slot ``slot`` of update ``update`` trains on."""
        lo = (update * self.slots_per_update + slot) * self.tokens_per_slot
        hi = lo + self.tokens_per_slot
        out = []
        for p in range(lo // self.pass_tokens, (hi - 1) // self.pass_tokens + 1):
            order, starts = self._walk_pass(p)
            base = p * self.pass_tokens
            first, last = np.searchsorted(starts, [lo - base, hi - base], side="left")
            out.append(order[first:last])
        return np.concatenate(out)
