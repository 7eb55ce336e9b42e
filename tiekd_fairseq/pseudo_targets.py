"""Teacher pseudo-targets: sources decoded by fairseq's own ``SequenceGenerator``, cached.

Used by ``translation_tie_kd`` for the unlabeled source pool (a fresh shard every refresh)
and for the sequence-level KD baseline (the labeled sources, decoded once). Each data-parallel
rank decodes every world-size-th source of the shard; all ranks then hold the same pairs.
A cache file is plain text, one ``index<TAB>target token ids`` line per pair, written
atomically next to a JSON file that says what it was decoded from.
"""

import contextlib
import hashlib
import json
import logging
import os
import time
from argparse import Namespace
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from fairseq import utils
from fairseq.data import LanguagePairDataset, ListDataset
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.distributed import utils as distributed_utils

logger = logging.getLogger(__name__)

Pairs = Dict[int, torch.Tensor]  # source index -> target token ids (ending with eos)


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


_file_hashes: Dict[Tuple[str, int, int], str] = {}


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


def write_pairs(path: str, pairs: Pairs, meta: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for target, text in (
        (path, "".join(f"{i}\t{' '.join(map(str, pairs[i].tolist()))}\n" for i in sorted(pairs))),
        (path[: -len(".tsv")] + ".json", json.dumps(meta, sort_keys=True, indent=1) + "\n"),
    ):
        tmp = f"{target}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, target)  # a killed run never leaves a half-written cache


def read_pairs(path: str) -> Pairs:
    pairs = {}
    with open(path) as f:
        for line in f:
            index, _, ids = line.rstrip("\n").partition("\t")
            pairs[int(index)] = torch.tensor([int(t) for t in ids.split()], dtype=torch.long)
    return pairs


def _world() -> Tuple[int, int, Optional[object]]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1, None
    group = distributed_utils.get_data_parallel_group()
    return (distributed_utils.get_data_parallel_rank(),
            distributed_utils.get_data_parallel_world_size(), group)


def pairs_sha256(pairs: Pairs, keys) -> str:
    """Fingerprint of the pairs ``keys`` (in order) that an epoch trains on."""
    digest = hashlib.sha256()
    for i in keys:
        digest.update(f"{i}:{pairs[i].tolist()};".encode())
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


def _all_ranks_have(path: str) -> bool:
    """Every rank must take the same branch (decoding gathers across ranks)."""
    here = os.path.isfile(path)
    _, world, group = _world()
    if world == 1:
        return here
    flags: List[Optional[bool]] = [None] * world
    dist.all_gather_object(flags, here, group=group)
    return all(flags)


@contextlib.contextmanager
def _beamable_attention(models, beam: int):
    """fairseq-generate's encoder-attention shortcut (keys computed once per sentence, not per
    beam), switched off again afterwards: it would be wrong in the teacher's KD forward."""
    for m in models:
        m.decoder.set_beam_size(beam)
    try:
        yield
    finally:
        for m in models:
            m.decoder.set_beam_size(1)


def decode(task, models, sources, indices: Sequence[int], options: DecodeOptions,
           device: torch.device, seed: int, name: str) -> Tuple[Pairs, int]:
    """Translate ``sources[i]`` for ``i`` in ``indices`` with the teacher ``models``.

    Returns the pairs and how many sources were skipped as longer than the models accept.
    """
    rank, world, group = _world()
    mine = list(indices)[rank::world]
    src = ListDataset([sources[i] for i in mine], np.array([sources.sizes[i] for i in mine]))
    dataset = LanguagePairDataset(src, src.sizes, task.source_dictionary, shuffle=False)
    max_source = utils.resolve_max_positions(
        task.max_positions(), *(m.max_positions() for m in models))[0]
    order = dataset.ordered_indices()
    fits = order[src.sizes[order] <= max_source]
    skipped = len(order) - len(fits)
    batches = dataset.batch_by_size(fits, max_tokens=options.max_tokens, required_batch_size_multiple=1)
    generator = task.build_generator(models, options.generator_args())

    local: Dict[int, List[int]] = {}
    start, done, next_report = time.time(), 0, max(1, len(fits) // 10)
    with utils.set_torch_seed(seed * 1009 + rank), torch.no_grad(), _beamable_attention(models, options.beam):
        for batch in batches:
            sample = dataset.collater([dataset[i] for i in batch])
            if device.type == "cuda":
                sample = utils.move_to_cuda(sample, device=device)
            hypos = task.inference_step(generator, models, sample)
            for local_index, nbest in zip(sample["id"].tolist(), hypos):
                local[mine[local_index]] = nbest[0]["tokens"].tolist()
            done += len(hypos)
            if done >= next_report or done == len(fits):
                next_report += max(1, len(fits) // 10)
                logger.info(f"{name}: teacher decoded {done}/{len(fits)} sentences"
                            f"{f' on rank {rank}' if world > 1 else ''}, "
                            f"{done / max(time.time() - start, 1e-9):.1f} sentences/s")
    if world > 1:
        gathered: List[Optional[tuple]] = [None] * world
        dist.all_gather_object(gathered, (local, skipped), group=group)
        local = {k: v for part, _ in gathered for k, v in part.items()}
        skipped = sum(s for _, s in gathered)
    return {i: torch.tensor(t, dtype=torch.long) for i, t in local.items()}, skipped


def cached_decode(cache_path: str, meta: dict, decode_fn, name: str) -> Pairs:
    """Pairs from ``cache_path`` if every rank has it, else decoded and written (by rank 0)."""
    if _all_ranks_have(cache_path):
        pairs = read_pairs(cache_path)
        logger.info(f"{name}: reusing {len(pairs)} cached pseudo-target pairs from {cache_path}")
        return pairs
    start = time.time()
    pairs, skipped = decode_fn()
    elapsed = time.time() - start
    logger.info(f"{name}: teacher decoded {len(pairs)} sentences in {elapsed:.1f} s "
                f"({len(pairs) / max(elapsed, 1e-9):.1f} sentences/s); {skipped} skipped as "
                f"longer than the models' max positions")
    if _world()[0] == 0:
        write_pairs(cache_path, pairs, {**meta, "pairs": len(pairs), "skipped": skipped,
                                        "decode_seconds": round(elapsed, 3)})
    return pairs


def options_meta(options: DecodeOptions) -> dict:
    """The decoding options that change the output (batching does not, up to rounding)."""
    meta = asdict(options)
    del meta["max_tokens"]
    return meta
