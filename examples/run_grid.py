#!/usr/bin/env python3
"""The paper's comparison, measured: one teacher, students of several sizes trained with
CE, word-KD, seq-KD, TIE-KD and TIE-KD with an unlabeled pool, at one update budget; every
run is evaluated with ``tiekd-eval`` (last-K checkpoint average, beam search, sacreBLEU).

usage: python examples/run_grid.py [--work work/grid] [--jobs 2] ...   (see --help)

Resumable: a run with ``train.json`` is finished and skipped, a killed run resumes from its
``checkpoint_last.pt`` (fairseq's own resume), an evaluated run (``eval-*.json``) is not
evaluated again. ``docs/results.md`` is then written by ``examples/results_table.py``.
Without ``--data`` the LibreOffice-help en-de data is prepared into WORK/ by
``examples/data/prepare.sh``.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Student sizes: fairseq transformer configurations (see tiekd_fairseq/architectures.py).
SIZES = {
    "nano": ["--arch", "tie_kd_transformer_micro", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
             "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256"],
    "micro": ["--arch", "tie_kd_transformer_micro"],
    "tiny": ["--arch", "tie_kd_transformer_tiny"],
}
TIE_KD = ["--task", "translation_tie_kd", "--criterion", "tie_kd", "--kd-rate", "0.5", "--kd-topk", "5"]
METHODS = {  # the paper's settings: a = 0.5, k = 5, N = 3, label smoothing 0.1
    "ce": ["--criterion", "label_smoothed_cross_entropy"],
    "word_kd": TIE_KD + ["--kd-iters", "1", "--kd-no-top1", "--kd-no-topk"],
    "seq_kd": ["--task", "translation_tie_kd", "--seq-kd", "--criterion", "label_smoothed_cross_entropy"],
    "tie_kd": TIE_KD + ["--kd-iters", "3"],
    "tie_kd_pool": TIE_KD + ["--kd-iters", "3", "--unlabeled-data", "{pool}",
                             "--unlabeled-per-epoch", "{pool_per_epoch}"],
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--work", default="work/grid", help="all outputs go here")
    ap.add_argument("--data", help="fairseq-binarized data dir with train/valid/test "
                    "(default: prepare the LibreOffice en-de data into WORK/bin)")
    ap.add_argument("--pool", help="binarized unlabeled source pool (default: WORK/pool)")
    ap.add_argument("--ref", help="plain-text test references (default: WORK/raw/test.TGT)")
    ap.add_argument("--src", default="en")
    ap.add_argument("--tgt", default="de")
    ap.add_argument("--vocab", type=int, default=4000, help="SentencePiece vocabulary (data preparation)")
    ap.add_argument("--post-process", default="sentencepiece", help="fairseq-generate --post-process")
    ap.add_argument("--teacher-arch", default="tie_kd_transformer_tiny")
    ap.add_argument("--teacher-updates", type=int, default=2200)
    ap.add_argument("--updates", type=int, default=800, help="update budget of every student")
    ap.add_argument("--sizes", default="micro:3,nano:1",
                    help=f"student SIZE:SEEDS pairs, sizes from {sorted(SIZES)}")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"from {list(METHODS)}")
    ap.add_argument("--pool-per-epoch", type=int, default=2500)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--save-every", type=int, default=50,
                    help="checkpoint every S updates; the last --average-last are kept")
    ap.add_argument("--average-last", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="only evaluate runs that finished training (e.g. while another invocation trains)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    return ap.parse_args(argv)


def log(msg):
    print(f"[grid {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Grid:
    def __init__(self, args):
        self.a = args
        self.work = os.path.abspath(args.work)
        self.data = os.path.abspath(args.data or os.path.join(self.work, "bin"))
        self.pool = os.path.abspath(args.pool or os.path.join(self.work, "pool"))
        self.ref = os.path.abspath(args.ref or os.path.join(self.work, "raw", f"test.{args.tgt}"))
        self.bin = os.path.dirname(sys.executable)  # the venv's console scripts
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                        PYTHONUNBUFFERED="1")
        self.teacher_dir = os.path.join(self.work, "teacher")

    def common(self, save_dir, updates, seed):
        a = self.a
        return [
            self.data, "--user-dir", os.path.join(REPO, "tiekd_fairseq"), "--save-dir", save_dir,
            "--source-lang", a.src, "--target-lang", a.tgt,
            "--max-update", str(updates), "--seed", str(seed),
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0", "--lr", "2e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "300", "--max-tokens", str(a.max_tokens),
            "--share-all-embeddings", "--dropout", "0.1", "--label-smoothing", "0.1",
            "--num-workers", "0", "--cpu", "--log-format", "simple", "--log-interval", "100",
            # the last K checkpoints, S updates apart, for averaging; validation only near them
            "--no-epoch-checkpoints", "--save-interval-updates", str(a.save_every),
            "--keep-interval-updates", str(a.average_last),
            "--validate-after-updates", str(max(0, updates - (a.average_last - 1) * a.save_every)),
        ]

    def run_plan(self):
        """[(name, size, method, seed)] for every student run, decoding-heavy runs spread out."""
        sizes = [(s.split(":")[0], int(s.split(":")[1])) for s in self.a.sizes.split(",")]
        methods = self.a.methods.split(",")
        for name, _ in sizes:
            if name not in SIZES:
                sys.exit(f"unknown size {name!r}; known: {sorted(SIZES)}")
        for m in methods:
            if m not in METHODS:
                sys.exit(f"unknown method {m!r}; known: {list(METHODS)}")
        return [(f"{size}-{method}-s{seed}", size, method, seed)
                for seed in range(1, max(n for _, n in sizes) + 1)
                for size, n in sizes if seed <= n for method in methods]

    def student_command(self, name, size, method, seed):
        fill = {"pool": self.pool, "pool_per_epoch": str(self.a.pool_per_epoch)}
        save_dir = os.path.join(self.work, "runs", name)
        extra = [x.format(**fill) for x in METHODS[method]]
        if "--task" in extra:  # the teacher, and one shared cache of its translations
            extra += ["--teacher-path", os.path.join(self.teacher_dir, "checkpoint_last.pt"),
                      "--pseudo-cache-dir", os.path.join(self.work, "pseudo_targets")]
        return save_dir, self.common(save_dir, self.a.updates, seed) + SIZES[size] + extra

    def train(self, name, save_dir, args, threads=None):
        done = os.path.join(save_dir, "train.json")
        if os.path.exists(done):
            log(f"{name}: trained")
            return
        command = [os.path.join(self.bin, "fairseq-train")] + args
        if self.a.dry_run:
            print(shlex.join(command))
            return
        os.makedirs(save_dir, exist_ok=True)
        resumed = os.path.exists(os.path.join(save_dir, "checkpoint_last.pt"))
        log(f"{name}: {'resume' if resumed else 'train'}")
        start = time.time()
        with open(os.path.join(save_dir, "train.log"), "a") as out:
            out.write(f"{START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            out.flush()
            threads = str(threads or self.a.threads)
            env = dict(self.env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)  # this run's own peak RSS
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.time() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {save_dir}/train.log")
        updates, run_seconds = logged_progress(os.path.join(save_dir, "train.log"))
        record = {"name": name, "command": shlex.join(["fairseq-train"] + args),
                  "train_seconds": max(run_seconds, seconds), "last_process_seconds": seconds,
                  "resumed": resumed, "updates": updates, "updates_per_second": updates / max(run_seconds, seconds),
                  "peak_rss_mib": usage.ru_maxrss / 1024, "threads": int(threads), "jobs": self.a.jobs}
        with open(done, "w") as f:
            json.dump(record, f, indent=1)
        log(f"{name}: {updates} updates in {seconds / 60:.1f} min, peak RSS {record['peak_rss_mib']:.0f} MiB")

    def evaluate(self, name, save_dir, size, method, seed):
        if self.a.dry_run or any(f.startswith("eval-") and f.endswith(".json") for f in os.listdir(save_dir)):
            return
        log(f"{name}: evaluate")
        command = [os.path.join(self.bin, "tiekd-eval"), save_dir, "--data", self.data, "--ref", self.ref,
                   "--source-lang", self.a.src, "--target-lang", self.a.tgt,
                   "--average-last", str(self.a.average_last), "--beam", "4", "--lenpen", "0.6",
                   "--post-process", self.a.post_process,
                   "--teacher", os.path.join(self.teacher_dir, "checkpoint_last.pt"),
                   "--tag", json.dumps({"size": size, "method": method, "seed": seed})]
        subprocess.run(command, check=True, env=self.env, stdout=subprocess.DEVNULL)

    def record_invocation(self, start, end=None):
        """WORK/grid.json: what ran where and for how long, for docs/results.md."""
        from importlib.metadata import version
        path = os.path.join(self.work, "grid.json")
        grid = json.load(open(path)) if os.path.exists(path) else {"invocations": []}
        if end is None:
            self.invocation = len(grid["invocations"])  # entries are only appended, even when overlapping
            grid["invocations"].append({"start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)),
                                        "argv": sys.argv[1:], "minutes": None})
        else:
            grid["invocations"][self.invocation]["minutes"] = (end - start) / 60
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        raw = os.path.join(self.work, "raw")
        counts = {name: sum(1 for _ in open(os.path.join(raw, name), encoding="utf-8"))
                  for name in (f"train.{self.a.tgt}", f"valid.{self.a.tgt}", f"test.{self.a.tgt}", f"pool.{self.a.src}")
                  if os.path.exists(os.path.join(raw, name))}
        if self.a.evaluate_only:  # the training invocations' settings stay
            grid["wall_minutes"] = _span_minutes(grid["invocations"])
            with open(path, "w") as f:
                json.dump(grid, f, indent=1)
            return
        grid.update(
            command="python examples/run_grid.py " + shlex.join(sys.argv[1:]),
            machine=f"{os.cpu_count()} cores, {cpu}", torch=version("torch"),
            fairseq=next((version(d) for d in ("fairseq", "ve-fairseq", "fairseq-fixed") if _installed(d)), "?"),
            commit=commit.stdout.strip() or "?", jobs=self.a.jobs, threads=self.a.threads,
            data_note=(f"LibreOffice help en-{self.a.tgt} (Debian packages, examples/data/prepare.sh): "
                       + ", ".join(f"{n:,} {name}" for name, n in counts.items()) + " lines; "
                       f"SentencePiece {self.a.vocab}, joint dictionary.") if counts else self.data,
            wall_minutes=_span_minutes(grid["invocations"]))
        with open(path, "w") as f:
            json.dump(grid, f, indent=1)

    def main(self):
        a = self.a
        os.makedirs(self.work, exist_ok=True)
        start = time.time()
        if not a.dry_run:
            self.record_invocation(start)
        if not a.data:
            subprocess.run(["bash", os.path.join(REPO, "examples", "data", "prepare.sh"), self.work,
                            str(a.vocab), a.tgt], check=True, env=dict(self.env, PATH=f"{self.bin}:{os.environ['PATH']}"))
        teacher_args = self.common(self.teacher_dir, a.teacher_updates, 1) + [
            "--arch", a.teacher_arch, "--criterion", "label_smoothed_cross_entropy"]
        # the teacher gets every thread: everything else waits for it
        plan = self.run_plan()
        if a.evaluate_only:
            plan = [run for run in plan if os.path.exists(os.path.join(self.work, "runs", run[0], "train.json"))]
        else:
            self.train("teacher", self.teacher_dir, teacher_args, threads=a.jobs * a.threads)
            with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
                futures = [pool.submit(self.train, name, *self.student_command(name, size, method, seed))
                           for name, size, method, seed in plan]
                for f in futures:
                    f.result()
        self.evaluate("teacher", self.teacher_dir, "teacher", "teacher", 1)
        with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
            futures = [pool.submit(self.evaluate, name, os.path.join(self.work, "runs", name), size, method, seed)
                       for name, size, method, seed in plan]
            for f in futures:
                f.result()
        if not a.dry_run:
            self.record_invocation(start, time.time())
        log(f"all {len(plan)} student runs trained and evaluated under {self.work}")


def _span_minutes(invocations):
    """Minutes from the first invocation's start to the last one's end."""
    spans = [(time.mktime(time.strptime(i["start"], "%Y-%m-%d %H:%M:%S")), i["minutes"]) for i in invocations
             if i["minutes"] is not None]
    return (max(t + m * 60 for t, m in spans) - min(t for t, _ in spans)) / 60 if spans else 0.0


def _installed(dist):
    from importlib.metadata import PackageNotFoundError, version
    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


START_MARK = "[run_grid] fairseq-train started at "
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.M)


def logged_progress(train_log):
    """(last num_updates, training seconds) from a run's log. The seconds add up every
    fairseq-train process of the run (a killed one counts until its last log line): fairseq's
    own wall meter restarts at 0 on resume."""
    with open(train_log) as f:
        text = f.read()
    updates = re.findall(r"\| num_updates (\d+)", text)
    seconds = 0.0
    for segment in text.split(START_MARK)[1:]:
        start = time.mktime(time.strptime(segment[:19], "%Y-%m-%d %H:%M:%S"))
        stamps = STAMP.findall(segment)
        if stamps:
            seconds += time.mktime(time.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S")) - start
    return (int(updates[-1]) if updates else 0), seconds


if __name__ == "__main__":
    Grid(parse_args()).main()
