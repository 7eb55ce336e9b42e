#!/usr/bin/env python3
"""Online pseudo-targets on the demo's data: their cost per update against labeled-only
``tie_kd``, and what a student trained with them scores.

usage: python benchmarks/bench_online.py [DEMO_WORK]   (default work/demo; run examples/run_demo.sh first)

1. Cost: the demo's TIE-KD student (micro, N=3, 1,024 tokens a batch) for 20 and for 120
   updates, labeled only / online greedy / online beam 4 (``--unlabeled-online-max-tokens``
   256, a quarter of the batch); the CPU time (user + system, the process's own) of the
   difference is the cost of 100 updates, without start-up.
2. Quality: ``student_tie_kd_online``, the demo's ``student_tie_kd`` with ``--unlabeled-online``
   (greedy), trained as long (1,000 updates) and evaluated like the demo's students
   (``tiekd-eval --average-last 1``, beam 4, lenpen 0.6). Resumable: a finished step is skipped.
"""
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
UPDATES = int(os.environ.get("STUDENT_UPDATES", 1000))


def common(work, save_dir, updates):
    return [os.path.join(work, "bin"), "--user-dir", os.path.join(REPO, "tiekd_fairseq"), "--save-dir", save_dir,
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0", "--lr", "2e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "300", "--max-tokens", "1024",
            "--share-all-embeddings", "--dropout", "0.1", "--seed", "1", "--num-workers", "0", "--cpu",
            "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100",
            "--validate-interval-updates", "500", "--save-interval-updates", "500", "--keep-interval-updates", "1",
            "--max-update", str(updates), "--arch", "tie_kd_transformer_micro", "--task", "translation_tie_kd",
            "--teacher-path", os.path.join(work, "teacher", "checkpoint_last.pt"), "--criterion", "tie_kd",
            "--kd-rate", "0.5", "--kd-iters", "3", "--kd-topk", "5", "--label-smoothing", "0.1"]


VARIANTS = {
    "labeled only": [],
    "online, greedy": ["--unlabeled-online", "--unlabeled-online-max-tokens", "256"],
    "online, beam 4": ["--unlabeled-online", "--unlabeled-online-max-tokens", "256", "--pseudo-beam", "4"],
}


def cpu_seconds(args, log):
    with open(log, "w") as out:
        proc = subprocess.Popen([os.path.join(BIN, "fairseq-train")] + args, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fairseq-train failed; see {log}")
    return usage.ru_utime + usage.ru_stime


def main():
    work = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "work/demo")
    out_dir = os.path.join(work, "bench_online")
    os.makedirs(out_dir, exist_ok=True)
    pool = ["--unlabeled-data", os.path.join(work, "pool")]
    costs_file = os.path.join(out_dir, "costs.json")
    costs = json.load(open(costs_file)) if os.path.exists(costs_file) else {}
    for name, extra in VARIANTS.items():
        if name in costs:
            continue
        cpu = {}
        for updates in (20, 120):
            save = os.path.join(out_dir, f"{name.replace(' ', '_').replace(',', '')}-{updates}")
            cpu[updates] = cpu_seconds(common(work, save, updates) + (pool if extra else []) + extra + ["--no-save"],
                                       save + ".log")
        costs[name] = (cpu[120] - cpu[20]) / 100
        json.dump(costs, open(costs_file, "w"), indent=1)
    print("| mode | CPU s per update | × labeled only |\n|---|---|---|")
    for name, c in costs.items():
        print(f"| {name} | {c:.3f} | {c / costs['labeled only']:.2f} |")

    name = "student_tie_kd_online"
    save = os.path.join(work, name)
    if not os.path.exists(os.path.join(save, "train.json")):
        os.makedirs(save, exist_ok=True)
        start = time.time()
        args = common(work, save, UPDATES) + pool + ["--unlabeled-online"]
        cpu = cpu_seconds(args, os.path.join(save, "train.log"))
        json.dump({"command": shlex.join(["fairseq-train"] + args), "cpu_seconds": cpu,
                   "train_seconds": time.time() - start}, open(os.path.join(save, "train.json"), "w"), indent=1)
    record = os.path.join(save, "eval-test-avg1-beam4-lenpen0.6.json")
    if not os.path.exists(record):
        subprocess.run([os.path.join(BIN, "tiekd-eval"), save, "--data", os.path.join(work, "bin"),
                        "--ref", os.path.join(work, "raw", "test.de"), "--average-last", "1", "--beam", "4",
                        "--lenpen", "0.6", "--post-process", "sentencepiece"], check=True, stdout=subprocess.DEVNULL)
    print("\n| student | BLEU | chrF | train min |\n|---|---|---|---|")
    for student in ("student_tie_kd", "student_tie_kd_pool", name):
        path = os.path.join(work, student, "eval-test-avg1-beam4-lenpen0.6.json")
        if os.path.exists(path):
            r = json.load(open(path))
            seconds = (json.load(open(os.path.join(save, "train.json")))["train_seconds"] if student == name
                       else float(open(os.path.join(work, student, "train_seconds")).read()))
            print(f"| {student} | {r['bleu']:.2f} | {r['chrf']:.2f} | {seconds / 60:.1f} |")


if __name__ == "__main__":
    main()
