#!/usr/bin/env python3
"""A full training step (forward, backward, optimizer) of a student with a bigger teacher:
plain label_smoothed_cross_entropy vs tie_kd N=1 and N=3 (unfused), N=3 with the fused output
layer + loss, and N=3 fused with checkpointed passes.

Each variant runs in a fresh subprocess on the same batches with the same seed. "Peak extra
memory" is the peak during the steps minus what was allocated before the first one (student,
teacher, data): torch's own accounting on CUDA (max_memory_allocated), resident memory on
CPU (the kernel's high-water mark VmHWM, reset before the first step; the variants run with
glibc's MALLOC_MMAP_THRESHOLD_=65536, so that freed tensors go back to the kernel and RSS
follows the live tensors: with glibc's default, memory freed into its arenas stays resident,
and how much differs between variants by up to ~1.5 GiB at the base preset). The optimizer's state,
created by the first step, counts in it for every variant alike. Times are the median step
time after --warmup steps; on CPU also the process's CPU time per step (all its threads),
which other jobs on the machine disturb far less than the wall-clock time.

usage: python benchmarks/bench_train_step.py DATA_BIN [--student-dim 128] [--layers 2] [--steps 10]
       python benchmarks/bench_train_step.py --preset base [--fp16 | --bf16]
DATA_BIN: a fairseq-preprocess'ed directory (e.g. the demo's work/demo/bin); the teacher then
has the student's layers at twice its width. --preset base: the users' sizes on synthetic data
(speed does not depend on the words): student transformer_wmt_en_de, teacher
transformer_vaswani_wmt_en_de_big, both --share-all-embeddings, a 32,000-symbol joint
dictionary, every batch exactly 4,096 target tokens (128 sentences of 31 words + </s>).
--preset tiny is the same at toy sizes, for smoke tests.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = ["--task", "translation_tie_kd", "--criterion", "tie_kd"]
VARIANTS = {
    "ce": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
    "tie_kd_N1": KD + ["--kd-iters", "1", "--kd-fused-output", "off"],
    "tie_kd_N3": KD + ["--kd-iters", "3", "--kd-fused-output", "off"],
    "tie_kd_N3_fused": KD + ["--kd-iters", "3", "--kd-fused-output", "auto"],
    "tie_kd_N3_fused_ckpt": KD + ["--kd-iters", "3", "--kd-fused-output", "auto", "--kd-checkpoint-passes"],
}
# Not run unless named in --variants: the fused loss with smaller chunks (4M elements at V = 32k).
EXTRA_VARIANTS = {
    "tie_kd_N3_fused_chunk128": KD + ["--kd-iters", "3", "--kd-fused-output", "auto", "--kd-chunk-tokens", "128"],
}
PRESETS = {  # student arch, teacher arch, vocabulary, words per sentence, steps, warmup
    "base": dict(student=["--arch", "transformer_wmt_en_de", "--share-all-embeddings"],
                 teacher=["--arch", "transformer_vaswani_wmt_en_de_big", "--share-all-embeddings"],
                 vocab=32000, words=31, steps=2, warmup=1),
    "tiny": dict(student=["--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "1",
                          "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
                          "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
                          "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"],
                 teacher=["--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "1",
                          "--decoder-layers", "1", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
                          "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
                          "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"],
                 vocab=1000, words=15, steps=1, warmup=1),
}
MAX_TOKENS = 4096


def arch_args(dim, layers):
    return ["--arch", "transformer", "--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
            "--encoder-ffn-embed-dim", str(4 * dim), "--decoder-ffn-embed-dim", str(4 * dim),
            "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]


def model_args(args, role):
    if args.preset:
        return PRESETS[args.preset][role]
    return arch_args(args.student_dim * (2 if role == "teacher" else 1), args.layers)


def synthetic_data(workdir, vocab, words, sentences=1024, seed=0):
    """A joint dictionary of `vocab` symbols (4 specials + words) and equal-length random
    sentence pairs, binarized by fairseq-preprocess."""
    dest = os.path.join(workdir, f"data-v{vocab}-w{words}")
    if os.path.exists(os.path.join(dest, "train.src-tgt.tgt.idx")):
        return dest
    raw = os.path.join(workdir, "raw")
    os.makedirs(raw, exist_ok=True)
    rng = random.Random(seed)
    symbols = [f"w{i}" for i in range(vocab - 4)]
    with open(os.path.join(raw, "dict.txt"), "w") as f:
        f.writelines(f"{w} {vocab - i}\n" for i, w in enumerate(symbols))
    for side in ("src", "tgt"):
        with open(os.path.join(raw, f"train.{side}"), "w") as f:
            for _ in range(sentences):
                f.write(" ".join(rng.choice(symbols) for _ in range(words)) + "\n")
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "src",
                    "--target-lang", "tgt", "--trainpref", os.path.join(raw, "train"), "--destdir", dest,
                    "--srcdict", os.path.join(raw, "dict.txt"), "--joined-dictionary", "--workers", "1"],
                   check=True, capture_output=True, text=True)
    return dest


def parse(data, extra, device_args):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", os.path.join(REPO, "tiekd_fairseq"), "--optimizer", "adam",
        "--lr", "1e-4", "--max-tokens", str(MAX_TOKENS), "--seed", "1", "--dropout", "0.1",
        *device_args, *extra])
    return convert_namespace_to_omegaconf(args)


def seeded(cfg):
    """Seed as fairseq-train does before it builds anything, so that every variant starts from
    the same weights (torch's own start-up seed differs between processes)."""
    import numpy as np
    from fairseq import utils

    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    return cfg


def make_teacher(data, teacher_args, path, device_args):
    """A randomly initialised teacher checkpoint (speed does not depend on its weights)."""
    from fairseq import tasks
    from fairseq.trainer import Trainer

    cfg = seeded(parse(data, teacher_args + ["--criterion", "label_smoothed_cross_entropy"], device_args))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(path, {})


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM)
        f.write("5")


def rss_bytes(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_variant(data, name, student_args, teacher, steps, warmup, device_args):
    import torch
    from fairseq import tasks
    from fairseq.trainer import Trainer

    extra = student_args + {**VARIANTS, **EXTRA_VARIANTS}[name]
    if name != "ce":
        extra += ["--teacher-path", teacher]
    cfg = seeded(parse(data, extra, device_args))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=MAX_TOKENS, seed=1,
                                  max_positions=(1024, 1024)).next_epoch_itr(shuffle=False)
    batches = [next(itr) for _ in range(steps + warmup)]
    cuda = torch.cuda.is_available() and "--cpu" not in device_args
    if name != "ce":  # the teacher is placed on the first step: do it now, so that it is in the base
        param = next(trainer.model.parameters())
        task.teacher.place(param.device, param.dtype)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_bytes()
    times, cpu_times, losses = [], [], []
    for i, batch in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        log = trainer.train_step([batch])
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        losses.append(float(log["loss"]) if log and "loss" in log else float("nan"))
    peak = torch.cuda.max_memory_allocated() if cuda else rss_bytes("VmHWM")
    return {"variant": name, "median_s": statistics.median(times), "median_cpu_s": statistics.median(cpu_times),
            "peak_extra_bytes": max(0, peak - base),
            "peak_bytes": peak, "memory": "cuda max_memory_allocated" if cuda else "RSS (VmHWM)",
            "tokens_per_step": statistics.mean(b["ntokens"] for b in batches[warmup:]),
            "threads": torch.get_num_threads(), "losses": losses,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "dtype": str(next(trainer.model.parameters()).dtype)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="fairseq-preprocess'ed data (not with --preset)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="the users' sizes (base) on synthetic data")
    ap.add_argument("--student-dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, help="measured steps (default 10; the preset's with --preset)")
    ap.add_argument("--warmup", type=int, help="unmeasured steps first (default 2; the preset's)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated, from " + ",".join([*VARIANTS, *EXTRA_VARIANTS]))
    ap.add_argument("--fp16", action="store_true", help="fairseq --fp16 (CUDA)")
    ap.add_argument("--bf16", action="store_true", help="fairseq --bf16")
    ap.add_argument("--cpu", action="store_true", help="stay on CPU even where CUDA is available")
    ap.add_argument("--workdir", default="/tmp/tiekd_bench_step")
    ap.add_argument("--json")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    preset = PRESETS.get(args.preset, {})
    steps = args.steps or preset.get("steps", 10)
    warmup = args.warmup if args.warmup is not None else preset.get("warmup", 2)
    import torch

    device_args = [] if torch.cuda.is_available() and not args.cpu else ["--cpu"]
    device_args += ["--fp16"] * args.fp16 + ["--bf16"] * args.bf16
    if args.variant:  # child process
        r = run_variant(args.data, args.variant, model_args(args, "student"), args.teacher, steps, warmup, device_args)
        print(json.dumps(r))
        return
    if bool(args.preset) == bool(args.data):
        ap.error("give DATA_BIN or --preset, not both")
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS) - set(EXTRA_VARIANTS)
    if unknown or "ce" not in variants:
        ap.error(f"--variants: unknown {sorted(unknown)} (and ce is needed, the reference)" if unknown
                 else "--variants must include ce, the reference")
    os.makedirs(args.workdir, exist_ok=True)
    data = args.data or synthetic_data(args.workdir, preset["vocab"], preset["words"])
    teacher = os.path.join(args.workdir, f"teacher-{args.preset or 'data'}.pt")
    make_teacher(data, model_args(args, "teacher"), teacher, device_args)
    res = {}
    for name in variants:
        cmd = [sys.executable, __file__, data, "--variant", name, "--teacher", teacher,
               "--student-dim", str(args.student_dim), "--layers", str(args.layers), "--steps", str(steps),
               "--warmup", str(warmup)] + (["--preset", args.preset] if args.preset else []) + \
            [f"--{f}" for f in ("fp16", "bf16", "cpu") if getattr(args, f)]
        t0 = time.time()
        env = {**os.environ}
        if "--cpu" in device_args:
            env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
        res[name]["process_s"] = time.time() - t0
        print(f"  ({name}: {res[name]['process_s']:.0f} s)", file=sys.stderr, flush=True)
    ce = res["ce"]
    what = (f"preset {args.preset}" if args.preset else
            f"student {args.layers}+{args.layers} layers dim {args.student_dim}, teacher dim {2 * args.student_dim}")
    print(f"train step, {what}, ~{ce['tokens_per_step']:.0f} target tokens/step, {ce['device']} {ce['dtype']}, "
          f"{ce['threads']} threads, median of {steps} after {warmup} warm-up; memory: {ce['memory']}")
    for name, r in res.items():
        print(f"  {name:21s} {1e3 * r['median_s']:9.1f} ms  x{r['median_s'] / ce['median_s']:.2f}   "
              + (f"CPU time {r['median_cpu_s']:7.1f} s  x{r['median_cpu_s'] / ce['median_cpu_s']:.2f}   "
                 if ce["device"] == "cpu" else "") +
              f"peak extra {r['peak_extra_bytes'] / 2**20:8.1f} MiB  "
              f"x{r['peak_extra_bytes'] / max(1, ce['peak_extra_bytes']):.2f}   "
              f"(peak {r['peak_bytes'] / 2**20:8.1f} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
