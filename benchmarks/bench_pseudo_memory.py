#!/usr/bin/env python3
"""Memory of N pseudo pairs ready to train: Python-held tensors (the plugin's storage before
2026-11-30) vs fairseq binaries trained memory-mapped (``pseudo_targets.PseudoPairs``).

usage: python benchmarks/bench_pseudo_memory.py [--pairs 1000000] [--length 25] [--vocab 32000]

Each variant runs in its own process on the same synthetic pool (N sources of ``--length``
tokens, targets of the same length) and reports its RSS growth over building the training
dataset, from before the decoded arrays exist to after they are freed (the pool's own memory
map excluded: both variants read it the same way).
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_pool(prefix, n, length, vocab):
    from fairseq.data.indexed_dataset import MMapIndexedDataset, best_fitting_int_dtype
    dtype = best_fitting_int_dtype(vocab)
    rng = np.random.default_rng(0)
    with open(prefix + ".bin", "wb") as f:
        for first in range(0, n, 100_000):
            rows = min(100_000, n - first)
            f.write(rng.integers(4, vocab, size=rows * length).astype(dtype).tobytes())
    with MMapIndexedDataset.Index.writer(prefix + ".idx", dtype) as index:
        index.write(np.full(n, length, dtype=np.int64))


def variant(kind, work, n, length, vocab):
    import torch
    from fairseq.data import Dictionary, LanguagePairDataset, ListDataset
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    from tiekd_fairseq.pseudo_targets import PseudoPairs, RowSubset, write_pairs

    d = Dictionary()
    for i in range(vocab - 4):
        d.add_symbol(f"w{i}")
    sources = MMapIndexedDataset(os.path.join(work, "pool"))
    start_rss, start = rss_mib(), time.time()
    rng = np.random.default_rng(1)
    targets = rng.integers(4, vocab, size=n * length).astype(np.int32)  # what a decode returns
    lengths = np.full(n, length, dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    if kind == "python_tensors":  # the old read_pairs + _with_targets
        pairs = {int(i): torch.tensor(targets[i * length:(i + 1) * length].tolist(), dtype=torch.long) for i in ids}
        keys = sorted(pairs)
        src = ListDataset([sources[i] for i in keys], np.array([sources.sizes[i] for i in keys], dtype=np.int64))
        tgt = ListDataset([pairs[i] for i in keys], np.array([len(pairs[i]) for i in keys], dtype=np.int64))
    else:
        prefix = os.path.join(work, "cache")
        write_pairs(prefix, ids, lengths, targets, {}, vocab)
        pairs = PseudoPairs(prefix)
        rows = np.arange(len(pairs))
        src, tgt = RowSubset(sources, pairs.source_index[rows]), RowSubset(pairs.targets, rows)
    del targets, lengths, ids  # what a decode returned: freed once the pairs are stored
    gc.collect()
    dataset = LanguagePairDataset(src, src.sizes, d, tgt, tgt.sizes, d, shuffle=True)
    batch = dataset.collater([dataset[i] for i in range(8)])  # it trains
    assert batch["target"].shape == (8, length)
    return {"variant": kind, "pairs": n, "rss_growth_mib": rss_mib() - start_rss,
            "seconds": time.time() - start}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--length", type=int, default=25)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(variant(a.variant, a.work, a.pairs, a.length, a.vocab)))
        return
    with tempfile.TemporaryDirectory() as work:
        make_pool(os.path.join(work, "pool"), a.pairs, a.length, a.vocab)
        rows = []
        for kind in ("python_tensors", "fairseq_binaries"):
            out = subprocess.run([sys.executable, __file__, "--variant", kind, "--work", work,
                                  "--pairs", str(a.pairs), "--length", str(a.length), "--vocab", str(a.vocab)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| storage | pairs | RSS growth | per pair | build s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['pairs']:,} | {r['rss_growth_mib']:,.0f} MiB "
              f"| {r['rss_growth_mib'] * 2**20 / r['pairs']:,.0f} B | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
