"""Teacher pseudo-targets: sources decoded by fairseq's own ``SequenceGenerator``, cached.

Used by ``translation_tie_kd`` for the unlabeled source pool (a fresh shard every refresh)
and for the sequence-level KD baseline (the labeled sources, decoded once). Each data-parallel
rank decodes every world-size-th source of the shard; all ranks then hold the same pairs.

A cache is fairseq's own binarized format, so millions of pairs train memory-mapped:
``PREFIX.bin/.idx`` (the target token ids, an ``MMapIndexedDataset``), ``PREFIX.src.npy``
(row j translates source ``src[j]``, ascending) and ``PREFIX.json`` (what it was decoded from),
written last: a cache without its ``.json`` does not exist.
"""

import hashlib
import json
import logging
import os
import time
from argparse import Namespace
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from fairseq import utils
from fairseq.data import BaseWrapperDataset, LanguagePairDataset
from fairseq.data.indexed_dataset import MMapIndexedDataset, best_fitting_int_dtype
from fairseq.distributed import utils as distributed_utils

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeOptions:
    """The teacher's decoding settings; they name fairseq-generate's options of the same role."""

    beam: int = 4
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    sampling: bool = False
    sampling_topk: int = -1
    sampling_topp: float = -1.0
    max_tokens: int = 4096

    def generator_args(self) -> Namespace:
        return Namespace(beam=self.beam, lenpen=self.lenpen, max_len_a=self.max_len_a,
                         max_len_b=self.max_len_b, sampling=self.sampling,
                         sampling_topk=self.sampling_topk, sampling_topp=self.sampling_topp)


class RowSubset(BaseWrapperDataset):
    """Rows ``rows`` of a dataset, in that order (repeats allowed), without copying them:
    a memory-mapped dataset stays memory-mapped."""

    def __init__(self, dataset, rows):
        super().__init__(dataset)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._sizes = np.asarray(dataset.sizes)[self.rows]

    def __getitem__(self, index):
        return self.dataset[int(self.rows[index])]

    def __len__(self):
        return len(self.rows)

    @property
    def sizes(self):
        return self._sizes

    def size(self, index):
        return self._sizes[index]

    def num_tokens(self, index):
        return self._sizes[index]

    @property
    def supports_prefetch(self):
        return False


class PseudoPairs:
    """A decoded cache: row j is the teacher's translation of source ``source_index[j]``."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.targets = MMapIndexedDataset(prefix)
        self.source_index = np.load(prefix + ".src.npy", mmap_mode="r")
        self._sha256 = None

    def __len__(self):
        return len(self.source_index)

    @property
    def sha256(self) -> str:
        """Content hash (source ids, target lengths and ids), computed once."""
        if self._sha256 is None:
            digest = hashlib.sha256(np.ascontiguousarray(self.source_index).tobytes())
            digest.update(np.asarray(self.targets.sizes, dtype=np.int64).tobytes())
            digest.update(self.targets._bin_buffer)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def as_dict(self):
        """{source index: target ids}; for small caches and tests."""
        return {int(i): self.targets[j] for j, i in enumerate(self.source_index)}


_file_hashes = {}


def file_sha256(path: str) -> str:
    """Content hash (memoised per file version) that keys caches on the teacher's weights."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def dataset_sha256(dataset) -> str:
    """Hash of a token dataset's content: sentence lengths and every token id."""
    digest = hashlib.sha256(np.asarray(dataset.sizes, dtype=np.int64).tobytes())
    if isinstance(dataset, MMapIndexedDataset):
        digest.update(dataset._bin_buffer)  # the same ids, hashed without a Python loop
    else:
        for i in range(len(dataset)):
            digest.update(dataset[i].numpy().astype(np.int64).tobytes())
    return digest.hexdigest()


def cache_key(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def exists(prefix: str) -> bool:
    return os.path.isfile(prefix + ".json")


def write_pairs(prefix: str, source_index: np.ndarray, lengths: np.ndarray, tokens: np.ndarray,
                meta: dict, vocab_size: int, rows_per_chunk: int = 1 << 20) -> None:
    """Write pairs (row j: ``tokens`` from ``sum(lengths[:j])``, ``lengths[j]`` of them, for
    ``source_index[j]``) sorted by source, so the file does not depend on how many ranks decoded
    it. Atomic: every file goes under a temporary name first, the ``.json`` last."""
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    tmp = f"{prefix}.tmp{os.getpid()}"
    dtype = best_fitting_int_dtype(vocab_size)
    order = np.argsort(source_index, kind="stable")
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    with open(tmp + ".bin", "wb") as f:
        for first in range(0, len(order), rows_per_chunk):  # bounded temporaries
            rows = order[first:first + rows_per_chunk]
            n = lengths[rows]
            gather = np.repeat(starts[rows] - (np.cumsum(n) - n), n) + np.arange(n.sum())
            f.write(np.asarray(tokens[gather], dtype=dtype).tobytes())
    with MMapIndexedDataset.Index.writer(tmp + ".idx", dtype) as index:
        index.write(lengths[order])
    with open(tmp + ".src.npy", "wb") as f:  # (np.save on a name would append .npy)
        np.save(f, np.asarray(source_index, dtype=np.int64)[order])
    with open(tmp + ".json", "w") as f:
        f.write(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    for ext in (".bin", ".idx", ".src.npy", ".json"):
        os.replace(tmp + ext, prefix + ext)


def _world() -> Tuple[int, int, Optional[object]]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1, None
    group = distributed_utils.get_data_parallel_group()
    return (distributed_utils.get_data_parallel_rank(),
            distributed_utils.get_data_parallel_world_size(), group)


def selection_sha256(pairs: PseudoPairs, rows: np.ndarray) -> str:
    """Fingerprint of the rows of ``pairs`` (in order) that an epoch trains on."""
    digest = hashlib.sha256(pairs.sha256.encode())
    digest.update(np.asarray(rows, dtype=np.int64).tobytes())
    return digest.hexdigest()


def check_same_on_all_ranks(fingerprint: str, what: str) -> int:
    """Raise unless every data-parallel rank has the same fingerprint; returns the world size."""
    _, world, group = _world()
    if world > 1:
        prints: List[Optional[str]] = [None] * world
        dist.all_gather_object(prints, fingerprint, group=group)
        if len(set(prints)) > 1:
            raise RuntimeError(f"{what} differ between ranks: {prints}")
    return world


def _all_ranks(flag: bool) -> bool:
    """Every rank must take the same branch (decoding gathers across ranks)."""
    _, world, group = _world()
    if world == 1:
        return flag
    flags: List[Optional[bool]] = [None] * world
    dist.all_gather_object(flags, flag, group=group)
    return all(flags)


class BeamableAttention:
    """fairseq-generate's encoder-attention shortcut (keys computed once per sentence, not per
    beam), switched off again afterwards: it would be wrong in the teacher's KD forward."""

    def __init__(self, models, beam: int):
        self.models, self.beam = models, beam

    def __enter__(self):
        for m in self.models:
            m.decoder.set_beam_size(self.beam)

    def __exit__(self, *exc):
        for m in self.models:
            m.decoder.set_beam_size(1)


def build_generator(task, models, options: DecodeOptions):
    """fairseq's generator for ``options``, its targets no longer than the student's task and
    every teacher accept."""
    return task.build_generator(models, options.generator_args(),
                                extra_gen_cls_kwargs={"max_len": max_positions(task, models)[1]})


@torch.no_grad()
def translate_batch(task, generator, models, sample, device: torch.device) -> List[torch.Tensor]:
    """The best hypothesis (on CPU, ending with eos) for each sentence of a collated batch, in
    the batch's order."""
    if device.type == "cuda":
        sample = utils.move_to_cuda(sample, device=device)
    return [nbest[0]["tokens"].cpu() for nbest in task.inference_step(generator, models, sample)]


def max_positions(task, models) -> Tuple[int, int]:
    """(source, target) lengths that the student's task and every teacher accept."""
    return utils.resolve_max_positions(task.max_positions(), *(m.max_positions() for m in models))


def decode(task, models, sources, indices: Sequence[int], options: DecodeOptions,
           device: torch.device, seed: int, name: str):
    """Translate ``sources[i]`` for ``i`` in ``indices`` with the teacher ``models``.

    Returns (source ids, target lengths, the targets' token ids concatenated) over all ranks, and how many sources were skipped as longer than the models accept. Targets are at
    most as long as the student's task and every teacher accept.
    """
    rank, world, group = _world()
    mine = np.asarray(indices, dtype=np.int64)[rank::world]
    src = RowSubset(sources, mine)
    dataset = LanguagePairDataset(src, src.sizes, task.source_dictionary, shuffle=False)
    order = dataset.ordered_indices()
    fits = order[src.sizes[order] <= max_positions(task, models)[0]]
    skipped = len(order) - len(fits)
    batches = dataset.batch_by_size(fits, max_tokens=options.max_tokens, required_batch_size_multiple=1)
    generator = build_generator(task, models, options)

    ids, lengths, tokens = [], [], []  # per batch: compact arrays, not per-pair Python objects
    start, done, next_report = time.time(), 0, max(1, len(fits) // 10)
    with utils.set_torch_seed(seed * 1009 + rank), BeamableAttention(models, options.beam):
        for batch in batches:
            sample = dataset.collater([dataset[i] for i in batch])
            best = translate_batch(task, generator, models, sample, device)
            ids.append(mine[sample["id"].cpu().numpy()])
            lengths.append(np.array([len(t) for t in best], dtype=np.int64))
            tokens.append(torch.cat(best).numpy().astype(np.int32))
            done += len(best)
            if done >= next_report or done == len(fits):
                next_report += max(1, len(fits) // 10)
                logger.info(f"{name}: teacher decoded {done}/{len(fits)} sentences"
                            f"{f' on rank {rank}' if world > 1 else ''}, "
                            f"{done / max(time.time() - start, 1e-9):.1f} sentences/s")
    part = tuple(np.concatenate(x) if x else np.zeros(0, dtype=d)
                 for x, d in ((ids, np.int64), (lengths, np.int64), (tokens, np.int32)))
    parts = [(part, skipped)]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (part, skipped), group=group)
    merged = tuple(np.concatenate([p[i] for p, _ in parts]) for i in range(3))
    return merged, sum(s for _, s in parts)


def cached_decode(prefix: str, meta: dict, decode_fn, name: str, vocab_size: int) -> PseudoPairs:
    """The cache at ``prefix`` if every rank has it, else decoded and written (by rank 0, and by
    any other rank that does not see rank 0's file: it may not share the file system)."""
    if _all_ranks(exists(prefix)):
        pairs = PseudoPairs(prefix)
        logger.info(f"{name}: reusing {len(pairs)} cached pseudo-target pairs from {prefix}")
        return pairs
    start = time.time()
    (ids, lengths, tokens), skipped = decode_fn()
    elapsed = time.time() - start
    logger.info(f"{name}: teacher decoded {len(ids)} sentences in {elapsed:.1f} s "
                f"({len(ids) / max(elapsed, 1e-9):.1f} sentences/s); {skipped} skipped as "
                f"longer than the models' max positions")
    meta = {**meta, "pairs": len(ids), "skipped": skipped, "decode_seconds": round(elapsed, 3)}
    rank, world, group = _world()
    if rank == 0:
        write_pairs(prefix, ids, lengths, tokens, meta, vocab_size)
    if world > 1:
        dist.barrier(group=group)
        if rank != 0 and not exists(prefix):
            write_pairs(prefix, ids, lengths, tokens, meta, vocab_size)
    return PseudoPairs(prefix)


def options_meta(options: DecodeOptions) -> dict:
    """The decoding options that change the output (batching does not, up to rounding)."""
    meta = asdict(options)
    del meta["max_tokens"]
    return meta
