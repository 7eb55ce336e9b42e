#!/usr/bin/env python3
"""A full training step (forward, backward, optimizer) of a student with a teacher twice its
size, on real batches: plain label_smoothed_cross_entropy vs tie_kd N=1 and N=3.

Each variant runs in a fresh subprocess on the same batches with the same seed; "peak
extra memory" is that process's peak RSS during the timed steps minus its RSS before the
first step. Times are the median step time after --warmup steps.

usage: python benchmarks/bench_train_step.py DATA_BIN [--student-dim 128] [--steps 10]
DATA_BIN: a fairseq-preprocess'ed directory (e.g. the demo's work/demo/bin).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "ce": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
    "tie_kd_N1": ["--task", "translation_tie_kd", "--criterion", "tie_kd", "--kd-iters", "1"],
    "tie_kd_N3": ["--task", "translation_tie_kd", "--criterion", "tie_kd", "--kd-iters", "3"],
}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def arch_args(dim, layers):
    return ["--arch", "transformer", "--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
            "--encoder-ffn-embed-dim", str(4 * dim), "--decoder-ffn-embed-dim", str(4 * dim),
            "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]


def parse(data, extra):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", os.path.join(REPO, "tiekd_fairseq"), "--optimizer", "adam",
        "--lr", "1e-4", "--max-tokens", "4096", "--cpu", "--seed", "1", "--dropout", "0.1", *extra])
    return convert_namespace_to_omegaconf(args)


def make_teacher(data, dim, layers, path):
    """A randomly initialised teacher checkpoint (speed does not depend on its weights)."""
    from fairseq import tasks
    from fairseq.trainer import Trainer

    cfg = parse(data, arch_args(dim, layers) + ["--criterion", "label_smoothed_cross_entropy"])
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(path, {})


def run_variant(data, name, dim, layers, teacher, steps, warmup):
    import torch
    from fairseq import tasks
    from fairseq.trainer import Trainer

    extra = arch_args(dim, layers) + VARIANTS[name]
    if name != "ce":
        extra += ["--teacher-path", teacher]
    cfg = parse(data, extra)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=4096, seed=1,
                                  max_positions=(1024, 1024)).next_epoch_itr(shuffle=False)
    batches = [next(itr) for _ in range(steps + warmup)]
    base = rss_bytes()
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        trainer.train_step([batch])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": name, "median_s": statistics.median(times), "peak_extra_bytes": max(0, peak - base),
            "tokens_per_step": statistics.mean(b["ntokens"] for b in batches[warmup:]),
            "threads": torch.get_num_threads()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--student-dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/tiekd_bench_step")
    ap.add_argument("--json")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        r = run_variant(args.data, args.variant, args.student_dim, args.layers, args.teacher, args.steps, args.warmup)
        print(json.dumps(r))
        return
    os.makedirs(args.workdir, exist_ok=True)
    teacher = os.path.join(args.workdir, "teacher.pt")
    make_teacher(args.data, 2 * args.student_dim, args.layers, teacher)
    res = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, args.data, "--variant", name, "--teacher", teacher,
                              "--student-dim", str(args.student_dim), "--layers", str(args.layers),
                              "--steps", str(args.steps), "--warmup", str(args.warmup)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
    ce = res["ce"]
    print(f"train step, student {args.layers}+{args.layers} layers dim {args.student_dim}, teacher dim "
          f"{2 * args.student_dim}, ~{ce['tokens_per_step']:.0f} target tokens/step, {ce['threads']} threads, "
          f"median of {args.steps}")
    for name, r in res.items():
        print(f"  {name:10s} {1e3 * r['median_s']:8.1f} ms  x{r['median_s'] / ce['median_s']:.2f}   "
              f"peak extra {r['peak_extra_bytes'] / 2**20:7.1f} MiB  x{r['peak_extra_bytes'] / max(1, ce['peak_extra_bytes']):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
