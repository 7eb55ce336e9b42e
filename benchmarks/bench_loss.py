#!/usr/bin/env python3
"""TIE-KD loss alone, forward + backward: this project's loss vs the naive formulation.

The naive formulation is the one of the authors' code (songmzhang/NMT-KD), written out in
full-vocabulary tensors with autograd: softmax / log-softmax of student and teacher,
products, top-k on both, gathers. (Their ``log(p + 1e-6)`` is replaced by
``log_softmax`` so that both variants compute the same numbers and can be checked equal.)

Each variant runs in a fresh subprocess, so its peak RSS is its own: "peak extra memory"
is the peak resident memory during forward+backward minus the resident memory with only
the inputs allocated. Times are the median of --reps runs after --warmup runs.

usage: python benchmarks/bench_loss.py [--positions 4096] [--vocab 32000] [--k 5] [--smoke]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiekd_fairseq.losses import tie_kd_loss  # noqa: E402


def naive_loss(zs, zt, mask, k):
    """Full-tensor TIE-KD terms, every intermediate kept by autograd."""
    m = mask.to(zs.dtype)
    p_s, lp_s = zs.softmax(-1), zs.log_softmax(-1)
    p_t, lp_t = zt.softmax(-1), zt.log_softmax(-1)
    kl = ((p_t * (lp_t - lp_s)).sum(-1) * m).sum()
    t_idx = p_t.topk(k, -1).indices
    s_idx = p_s.topk(k, -1).indices
    ps_t, ps_s = p_s.gather(-1, t_idx), p_s.gather(-1, s_idx)
    pt_t, pt_s = p_t.gather(-1, t_idx), p_t.gather(-1, s_idx)
    top1 = ((ps_t[..., 1:] - ps_t[..., :1]).clamp_min(0).sum(-1) * m).sum()
    prefers = (pt_t[..., :, None] > pt_s[..., None, :]).to(zs.dtype)
    topk = (((ps_s[..., None, :] - ps_t[..., :, None]).clamp_min(0) * prefers).sum((-1, -2)) * m).sum()
    return kl + top1 + topk


def lean_loss(zs, zt, mask, k, chunk_tokens=None):
    return tie_kd_loss(zs, zt, mask, k, chunk_tokens=chunk_tokens).loss


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def inputs(positions, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(positions, vocab, generator=g).mul_(3).requires_grad_()
    zt = torch.randn(positions, vocab, generator=g).mul_(3)
    mask = torch.ones(positions, dtype=torch.bool)
    mask[-positions // 10:] = False  # ~10% padding
    return zs, zt, mask


def run_variant(name, positions, vocab, k, reps, warmup, chunk_tokens):
    """In this (fresh) process: time and peak extra memory of one variant."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    zs, zt, mask = inputs(positions, vocab)
    fn = naive_loss if name == "naive" else lambda *a: lean_loss(*a, chunk_tokens=chunk_tokens)
    base = rss_bytes()  # inputs allocated; nothing before this peaked higher
    loss = fn(zs, zt, mask, k)
    loss.backward()
    # the first fwd+bwd is the one measured (the gradient of the inputs included)
    extra = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    times = []
    for i in range(warmup + reps):
        zs.grad = None
        t0 = time.perf_counter()
        loss = fn(zs, zt, mask, k)
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"variant": name, "median_s": statistics.median(times), "peak_extra_bytes": extra,
            "loss": loss.item(), "grad": zs.grad}


def check_equal(positions, vocab, k):
    """Same loss and gradients (relative 1e-5), in this process, on smaller inputs."""
    zs, zt, mask = inputs(positions, vocab, seed=1)
    a = naive_loss(zs, zt, mask, k)
    ga, = torch.autograd.grad(a, zs)
    b = lean_loss(zs, zt, mask, k)
    gb, = torch.autograd.grad(b, zs)
    rel_loss = abs(a.item() - b.item()) / abs(a.item())
    rel_grad = ((ga - gb).norm() / ga.norm()).item()
    return rel_loss, rel_grad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--chunk-tokens", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    if args.smoke:
        args.positions, args.vocab, args.reps, args.warmup = 64, 500, 2, 1
    if args.variant:  # child process
        r = run_variant(args.variant, args.positions, args.vocab, args.k, args.reps, args.warmup, args.chunk_tokens)
        r.pop("grad")
        print(json.dumps(r))
        return
    results = {}
    for name in ("naive", "lean"):
        out = subprocess.run([sys.executable, __file__, "--variant", name, "--positions", str(args.positions),
                              "--vocab", str(args.vocab), "--k", str(args.k), "--reps", str(args.reps),
                              "--warmup", str(args.warmup), "--chunk-tokens", str(args.chunk_tokens)],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    rel_loss, rel_grad = check_equal(min(args.positions, 512), args.vocab, args.k)
    n, l = results["naive"], results["lean"]
    summary = {
        "positions": args.positions, "vocab": args.vocab, "k": args.k, "threads": torch.get_num_threads(),
        "naive_ms": 1e3 * n["median_s"], "lean_ms": 1e3 * l["median_s"],
        "time_ratio": l["median_s"] / n["median_s"],
        "naive_peak_extra_mib": n["peak_extra_bytes"] / 2**20, "lean_peak_extra_mib": l["peak_extra_bytes"] / 2**20,
        "memory_ratio": l["peak_extra_bytes"] / max(1, n["peak_extra_bytes"]),
        "loss_rel_diff": rel_loss, "grad_rel_diff": rel_grad,
    }
    print(f"loss fwd+bwd, {args.positions} positions x {args.vocab} vocab, k={args.k}, fp32 CPU, "
          f"{summary['threads']} threads, median of {args.reps}")
    print(f"  naive: {summary['naive_ms']:9.1f} ms   peak extra {summary['naive_peak_extra_mib']:8.1f} MiB")
    print(f"  lean : {summary['lean_ms']:9.1f} ms   peak extra {summary['lean_peak_extra_mib']:8.1f} MiB")
    print(f"  ratio lean/naive: time {summary['time_ratio']:.2f}x, peak extra memory {summary['memory_ratio']:.2f}x")
    print(f"  same result: loss rel diff {rel_loss:.1e}, grad rel diff {rel_grad:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if rel_loss > 1e-5 or rel_grad > 1e-5:
        sys.exit("lean and naive results differ")


if __name__ == "__main__":
    main()
