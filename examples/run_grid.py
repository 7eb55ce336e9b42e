#!/usr/bin/env python3
"""The paper's comparison, measured: one teacher, students of several sizes trained with
CE, word-KD, seq-KD, TIE-KD and TIE-KD with an unlabeled pool, under one update cap (and,
with ``--patience``, until validation CE stops improving); CE and word-KD students given the
CPU time that the TIE-KD student used (``*_eqtime``); every run is evaluated with
``tiekd-eval`` (last-K checkpoint average, beam search, sacreBLEU).

usage: python examples/run_grid.py [--work work/grid] [--jobs 2] ...   (see --help)

Resumable: a run with ``train.json`` is finished and skipped, a killed run resumes from its
``checkpoint_last.pt`` (fairseq's own resume), an evaluated run (``eval-*.json``) is not
evaluated again. ``docs/results.md`` is then written by ``examples/results_table.py``.
Data: ``--data`` (binarized), else ``--raw DIR`` (plain text, prepared into WORK/ by
``examples/data/binarize.sh``), else the LibreOffice-help en-de data (``examples/data/prepare.sh``).

Compute is the training process's own CPU time (user + system, all its threads), which other
work on the machine does not inflate the way it inflates wall time: read from /proc while the
run trains (so a killed run keeps what it used) and from ``wait4`` when it ends.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Student sizes: fairseq transformer configurations (see tiekd_fairseq/architectures.py).
SIZES = {
    "nano": ["--arch", "tie_kd_transformer_micro", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
             "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256"],
    "micro": ["--arch", "tie_kd_transformer_micro"],
    "mini": ["--arch", "tie_kd_transformer_tiny", "--encoder-embed-dim", "96", "--decoder-embed-dim", "96",
             "--encoder-ffn-embed-dim", "384", "--decoder-ffn-embed-dim", "384"],
    "tiny": ["--arch", "tie_kd_transformer_tiny"],
    "small": ["--arch", "tie_kd_transformer_small"],
    "base": ["--arch", "tie_kd_transformer_base"],
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
# Equal-compute baselines: METHOD_eqtime trains METHOD for as many updates as fit in the CPU
# time of the tie_kd run of the same size and seed (at METHOD's own CPU time per update).
EQTIME = "_eqtime"
METHODS.update({m + EQTIME: METHODS[m] for m in ("ce", "word_kd")})


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--work", default="work/grid", help="all outputs go here")
    ap.add_argument("--data", help="fairseq-binarized data dir with train/valid/test "
                    "(default: prepare the LibreOffice en-de data into WORK/bin)")
    ap.add_argument("--pool", help="binarized unlabeled source pool (default: WORK/pool)")
    ap.add_argument("--raw", help="plain-text {train,valid,test}.{SRC,TGT} to prepare (SentencePiece, "
                    "fairseq-preprocess) into WORK/ (default: the LibreOffice-help data)")
    ap.add_argument("--pool-text", help="with --raw: unlabeled source text for the pool (one sentence a line)")
    ap.add_argument("--data-note", help="what the data is, for docs/results.md")
    ap.add_argument("--ref", help="plain-text test references (default: WORK/raw/test.TGT)")
    ap.add_argument("--src", default="en")
    ap.add_argument("--tgt", default="de")
    ap.add_argument("--vocab", type=int, default=4000, help="SentencePiece vocabulary (data preparation)")
    ap.add_argument("--post-process", default="sentencepiece", help="fairseq-generate --post-process")
    ap.add_argument("--teacher-arch", default="tie_kd_transformer_tiny")
    ap.add_argument("--teacher-updates", type=int, default=2200, help="the teacher's update cap")
    ap.add_argument("--teacher-patience", type=int, default=0,
                    help="stop the teacher after P validations without a better validation loss (0: off)")
    ap.add_argument("--teacher-save-every", type=int, help="the teacher's --save-every (default: --save-every)")
    ap.add_argument("--updates", type=int, default=800, help="update cap of every student")
    ap.add_argument("--patience", type=int, default=0,
                    help="stop a student after P validations (one every --save-every updates) without a "
                    "better validation loss (0: train to --updates); *_eqtime runs train to their budget")
    ap.add_argument("--sizes", default="micro:3,nano:1",
                    help=f"students: SIZE:SEEDS[:METHOD+METHOD...] items (default methods: --methods), "
                    f"sizes from {sorted(SIZES)}")
    ap.add_argument("--methods", default=",".join(m for m in METHODS if not m.endswith(EQTIME)),
                    help=f"from {list(METHODS)}")
    ap.add_argument("--eqtime", default="", help="SIZE:SEEDS[:METHOD+...] items that also get the *_eqtime "
                    "baselines of --eqtime-methods (the runs they are measured against must be in the grid)")
    ap.add_argument("--eqtime-methods", default="ce_eqtime,word_kd_eqtime")
    ap.add_argument("--pool-per-epoch", type=int, default=2500)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (inverse_sqrt schedule)")
    ap.add_argument("--warmup-updates", type=int, default=300)
    ap.add_argument("--save-every", type=int, default=50,
                    help="checkpoint every S updates (and validate, with --patience); the last --average-last are kept")
    ap.add_argument("--average-last", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--teacher-threads", type=int,
                    help="torch threads of the teacher's training (default: jobs x threads; 1 is the "
                    "safe choice on a machine that other work shares: waiting threads spin)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="only evaluate runs that finished training (e.g. while another invocation trains)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--status", action="store_true",
                    help="print each run's state and an estimate of the CPU time left, then exit (trains "
                    "nothing); with only --work, the grid's settings are those of its last invocation")
    return ap.parse_args(argv)


def status_argv(argv):
    """``--status --work W`` alone: the settings of W's last recorded invocation, plus --status."""
    args = parse_args(argv)
    path = os.path.join(args.work, "grid.json")
    if set(a for a in argv if a.startswith("--")) == {"--status", "--work"}:
        if not os.path.exists(path):
            sys.exit(f"run_grid: {path} does not exist (the grid has not started): give --status the grid's options")
        with open(path) as f:
            last = json.load(f)["invocations"][-1]["argv"]
        return parse_args(last + ["--status"])
    return args


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
        # students learn from the teacher as it is evaluated: its last --average-last checkpoints averaged
        self.teacher = os.path.join(self.teacher_dir, f"average_last{args.average_last}.pt"
                                    if args.average_last > 1 else "checkpoint_last.pt")
        self.jobs = {}  # run name -> future, for the runs that wait on others
        self.cuda = _cuda_available()

    def common(self, save_dir, updates, seed, patience=0, validate_every_save=False, save_every=None):
        a = self.a
        validate_every_save = validate_every_save or patience > 0
        save_every = save_every or a.save_every
        # Validation (and interval checkpoints: fairseq saves none before --validate-after-updates)
        # at every save, or only at the last --average-last saves.
        last_save = updates - updates % save_every
        validate_after = 0 if validate_every_save else max(0, last_save - (a.average_last - 1) * save_every)
        return [
            self.data, "--user-dir", os.path.join(REPO, "tiekd_fairseq"), "--save-dir", save_dir,
            "--source-lang", a.src, "--target-lang", a.tgt,
            "--max-update", str(updates), "--seed", str(seed),
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0", "--lr", str(a.lr),
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(a.warmup_updates),
            "--max-tokens", str(a.max_tokens),
            "--share-all-embeddings", "--dropout", "0.1", "--label-smoothing", "0.1",
            "--num-workers", "0", "--log-format", "simple", "--log-interval", "100",
            # the last K checkpoints, S updates apart, for averaging
            "--no-epoch-checkpoints", "--save-interval-updates", str(save_every),
            "--keep-interval-updates", str(a.average_last), "--validate-after-updates", str(validate_after),
        ] + (["--patience", str(patience)] if patience else []) + (["--cpu"] if not self.cuda else [])

    def eqtime_updates(self, size, method, seed):
        """Updates that METHOD gets for the CPU time of the tie_kd run of the same size and seed."""
        base, tie = (self.train_record(f"{size}-{m}-s{seed}") for m in (method[:-len(EQTIME)], "tie_kd"))
        per_update = base["cpu_seconds"] / base["updates"]
        every = self.a.save_every  # whole checkpoint intervals, so that the average covers the end
        return max(1, round(tie["cpu_seconds"] / per_update / every)) * every, {
            "cpu_budget_seconds": tie["cpu_seconds"], "base_cpu_seconds_per_update": per_update}

    def train_record(self, name):
        future = self.jobs.get(name)
        if future is not None:
            future.result()  # trained (and evaluated) first; its failure is ours
        with open(os.path.join(self.work, "runs", name, "train.json")) as f:
            return json.load(f)

    def student_command(self, name, size, method, seed):
        fill = {"pool": self.pool, "pool_per_epoch": str(self.a.pool_per_epoch)}
        save_dir = os.path.join(self.work, "runs", name)
        extra = [x.format(**fill) for x in METHODS[method]]
        if "--task" in extra:  # the teacher, and one shared cache of its translations
            extra += ["--teacher-path", self.teacher,
                      "--pseudo-cache-dir", os.path.join(self.work, "pseudo_targets")]
        updates, patience, note = self.a.updates, self.a.patience, {}
        eqtime = method.endswith(EQTIME)
        if eqtime and not self.a.dry_run and not os.path.exists(os.path.join(save_dir, "train.json")):
            (updates, note), patience = self.eqtime_updates(size, method, seed), 0
        # equal-compute runs validate as often as the runs their CPU time per update comes from
        common = self.common(save_dir, updates, seed, patience, validate_every_save=bool(self.a.patience))
        return save_dir, common + SIZES[size] + extra, patience, note

    def run_student(self, name, size, method, seed):
        save_dir, args, patience, note = self.student_command(name, size, method, seed)
        self.train(name, save_dir, args, patience=patience, note=note)
        self.evaluate(name, save_dir, size, method, seed)

    def train(self, name, save_dir, args, threads=None, patience=0, note=None):
        done = os.path.join(save_dir, "train.json")
        if os.path.exists(done):
            log(f"{name}: trained")
            return
        command = [os.path.join(self.bin, "fairseq-train")] + args
        if self.a.dry_run:
            print(shlex.join(command))
            return
        os.makedirs(save_dir, exist_ok=True)
        train_log, cpu_file = os.path.join(save_dir, "train.log"), os.path.join(save_dir, "cpu.json")
        resumed = os.path.exists(os.path.join(save_dir, "checkpoint_last.pt"))
        cpu_segments = json.load(open(cpu_file))["segments"] if os.path.exists(cpu_file) else []
        stop = patience_stop(open(train_log).read(), patience) if resumed and os.path.exists(train_log) else None
        start = time.time()
        if stop is None:
            log(f"{name}: {'resume' if resumed else 'train'}")
            with open(train_log, "a") as out:
                out.write(f"{START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                out.flush()
                threads = str(threads or self.a.threads)
                env = dict(self.env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
                cpu_segments.append(0.0)
                # this run's own CPU time and peak RSS
                # fairseq's --patience stops a fresh process; a resumed one counts from 0 again
                stop, returncode, usage = self.watch(proc, train_log, patience if resumed else 0,
                                                     cpu_segments, cpu_file)
            cpu_segments[-1] = usage.ru_utime + usage.ru_stime
            _write_json(cpu_file, {"segments": cpu_segments})
            if returncode != 0 and stop is None:
                raise RuntimeError(f"{name} failed (exit {returncode}); see {save_dir}/train.log")
            peak_rss = usage.ru_maxrss / 1024
        else:
            peak_rss = None  # the stop was decided before the last kill; nothing left to run
        seconds = time.time() - start
        updates, run_seconds = logged_progress(train_log)
        text = open(train_log).read()
        best, cap = best_validation(text), int(args[args.index("--max-update") + 1])
        record = {"name": name, "command": shlex.join(["fairseq-train"] + args),
                  "train_seconds": max(run_seconds, seconds), "last_process_seconds": seconds,
                  "cpu_seconds": sum(cpu_segments), "resumed": resumed, "updates": updates,
                  "updates_per_second": updates / max(run_seconds, seconds, 1e-9),
                  "stopped": "patience" if updates < cap else "max_update",
                  "patience": patience, "best_valid_loss": best[0] if best else None,
                  "best_valid_update": best[1] if best else None,
                  "peak_rss_mib": peak_rss, "threads": int(threads or self.a.threads), "jobs": self.a.jobs,
                  **(note or {})}
        _write_json(done, record)
        log(f"{name}: {updates} updates ({record['stopped']}), {record['cpu_seconds'] / 60:.1f} CPU-min, "
            f"{record['train_seconds'] / 60:.1f} min")

    def watch(self, proc, train_log, patience, cpu_segments, cpu_file, every=1.0):
        """Wait for ``proc``, recording its CPU time as it goes; with ``patience``, end it
        (SIGTERM) once the validations in its whole log say so and the checkpoint of that
        validation is saved (for resumed processes: fairseq's own counter restarts at 0; this one
        reads the logged losses, rounded to 3 decimals, so a tie there counts as no improvement).
        Returns (the update it was stopped at or None, exit code, rusage)."""
        tick = os.sysconf("SC_CLK_TCK")
        stop = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it only once it exited
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return stop, proc.returncode, usage
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu_segments[-1] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
                _write_json(cpu_file, {"segments": cpu_segments})
            except (OSError, IndexError, ValueError):
                pass  # exiting meanwhile
            if patience and stop is None:
                text = open(train_log).read()
                update = patience_stop(text, patience)
                if update is not None and re.search(rf"Saved checkpoint \S+ \(epoch \d+ @ {update} updates", text):
                    stop = update
                    proc.terminate()
                    continue
            time.sleep(every)

    def evaluate(self, name, save_dir, size, method, seed):
        if self.a.dry_run or any(f.startswith("eval-") and f.endswith(".json") for f in os.listdir(save_dir)):
            return
        log(f"{name}: evaluate")
        command = [os.path.join(self.bin, "tiekd-eval"), save_dir, "--data", self.data, "--ref", self.ref,
                   "--source-lang", self.a.src, "--target-lang", self.a.tgt,
                   "--average-last", str(self.a.average_last), "--beam", "4", "--lenpen", "0.6",
                   "--post-process", self.a.post_process,
                   "--teacher", self.teacher,
                   "--tag", json.dumps({"size": size, "method": method, "seed": seed})]
        subprocess.run(command, check=True, env=self.env, stdout=subprocess.DEVNULL)

    def record_invocation(self, start, end=None):
        """WORK/grid.json: what ran where and for how long, for docs/results.md."""
        from importlib.metadata import version
        path = os.path.join(self.work, "grid.json")
        grid = json.load(open(path)) if os.path.exists(path) else {"invocations": []}
        commit = _commit()
        if end is None:
            self.invocation = len(grid["invocations"])  # entries are only appended, even when overlapping
            grid["invocations"].append({"start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)),
                                        "argv": sys.argv[1:], "minutes": None, "commit": commit})
        else:
            grid["invocations"][self.invocation]["minutes"] = (end - start) / 60
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
        raw = os.path.join(self.work, "raw")
        counts = {name: sum(1 for _ in open(os.path.join(raw, name), encoding="utf-8"))
                  for name in (f"train.{self.a.tgt}", f"valid.{self.a.tgt}", f"test.{self.a.tgt}", f"pool.{self.a.src}")
                  if os.path.exists(os.path.join(raw, name))}
        if self.a.evaluate_only:  # the training invocations' settings stay
            _write_json(path, grid)
            return
        source = self.a.data_note or (f"LibreOffice help en-{self.a.tgt} (Debian packages, examples/data/prepare.sh)"
                                      if not self.a.raw else f"{self.a.src}-{self.a.tgt} text from {self.a.raw}")
        grid.update(
            command="python examples/run_grid.py " + shlex.join(sys.argv[1:]),
            machine=f"{os.cpu_count()} cores, {cpu}", torch=version("torch"),
            fairseq=next((version(d) for d in ("fairseq", "ve-fairseq", "fairseq-fixed") if _installed(d)), "?"),
            commit=commit, jobs=self.a.jobs, threads=self.a.threads,
            src=self.a.src, tgt=self.a.tgt,
            data_note=(f"{source}: " + ", ".join(f"{n:,} {name}" for name, n in counts.items()) + " lines; "
                       f"SentencePiece {self.a.vocab}, joint dictionary.") if counts else self.data)
        _write_json(path, grid)

    def prepare_data(self):
        a, env = self.a, dict(self.env, PATH=f"{self.bin}:{os.environ['PATH']}")
        if a.data:
            return
        if not a.raw:
            subprocess.run(["bash", os.path.join(REPO, "examples", "data", "prepare.sh"), self.work,
                            str(a.vocab), a.tgt], check=True, env=env)
            return
        raw = os.path.join(self.work, "raw")
        os.makedirs(raw, exist_ok=True)
        copies = [(os.path.join(a.raw, f"{split}.{lang}"), os.path.join(raw, f"{split}.{lang}"))
                  for split in ("train", "valid", "test") for lang in (a.src, a.tgt)]
        if a.pool_text:
            copies.append((a.pool_text, os.path.join(raw, f"pool.{a.src}")))
        for src, dst in copies:
            if not os.path.exists(dst):
                shutil.copyfile(src, dst + ".tmp")
                os.replace(dst + ".tmp", dst)
        subprocess.run(["bash", os.path.join(REPO, "examples", "data", "binarize.sh"), self.work,
                        str(a.vocab), a.src, a.tgt], check=True, env=env)

    def status(self):
        """Each run's state, and the CPU time the unfinished ones will take, estimated from the
        finished runs of the same size and method (else of the method, else of the run measured
        against for *_eqtime)."""
        rows, done = [], {}  # rows: dicts with "left" None until estimated, 0.0 when trained
        for name, size, method, _ in [("teacher", "teacher", "teacher", 1)] + run_plan(self.a):
            run_dir = self.teacher_dir if name == "teacher" else os.path.join(self.work, "runs", name)
            train_json = os.path.join(run_dir, "train.json")
            cpu_file, train_log = os.path.join(run_dir, "cpu.json"), os.path.join(run_dir, "train.log")
            row = {"name": name, "size": size, "method": method, "left": None,
                   "cpu": sum(json.load(open(cpu_file))["segments"]) if os.path.exists(cpu_file) else 0.0}
            if os.path.exists(train_json):
                record = json.load(open(train_json))
                done.setdefault((size, method), []).append(record["cpu_seconds"])
                state = "evaluated" if glob.glob(os.path.join(run_dir, "eval-*.json")) else "trained"
                row.update(state=f"{state}: {record['updates']} updates ({record['stopped']})",
                           cpu=record["cpu_seconds"], left=0.0)
            else:
                row["state"] = (f"training: {logged_progress(train_log)[0]} updates so far"
                                if os.path.exists(train_log) else "not started")
            rows.append(row)
        by_method = {}
        for (size, method), values in done.items():
            by_method.setdefault(method, []).extend(values)
        for row in rows:
            if row["left"] is not None:
                continue
            size, method = row["size"], row["method"]
            guess = done.get((size, method)) or by_method.get(method) or (
                (done.get((size, "tie_kd")) or by_method.get(method[:-len(EQTIME)])) if method.endswith(EQTIME) else None)
            row["left"] = None if guess is None else max(0.0, statistics.fmean(guess) - row["cpu"])
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            left = r["left"]
            more = "" if left == 0.0 else ("  (left: unknown)" if left is None else f"  (left: ~{left / 60:.0f} CPU-min)")
            print(f"{r['name']:<{width}}  {r['state']:<40} {r['cpu'] / 60:7.1f} CPU-min{more}")
        left = sum(r["left"] or 0.0 for r in rows)
        print(f"{sum(r['left'] == 0.0 for r in rows)} of {len(rows)} runs trained; "
              f"{sum(r['cpu'] for r in rows) / 3600:.1f} CPU-h used; about {left / 3600:.1f} CPU-h left "
              f"(~{left / 3600 / max(1, self.a.jobs * self.a.threads):.1f} h on {self.a.jobs} x {self.a.threads} "
              f"thread(s); runs with no finished run of their method are not counted)")

    def main(self):
        a = self.a
        if a.status:
            return self.status()
        os.makedirs(self.work, exist_ok=True)
        start = time.time()
        if not a.dry_run:
            self.record_invocation(start)
        self.prepare_data()
        teacher_args = self.common(self.teacher_dir, a.teacher_updates, 1, a.teacher_patience,
                                   save_every=a.teacher_save_every) + [
            "--arch", a.teacher_arch, "--criterion", "label_smoothed_cross_entropy"]
        plan = run_plan(self.a)
        if a.evaluate_only:
            plan = [run for run in plan if os.path.exists(os.path.join(self.work, "runs", run[0], "train.json"))]
            self.evaluate("teacher", self.teacher_dir, "teacher", "teacher", 1)
            with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
                for f in [pool.submit(self.evaluate, name, os.path.join(self.work, "runs", name), size, method, seed)
                          for name, size, method, seed in plan]:
                    f.result()
        else:
            # the teacher trains first: everything else waits for it
            self.train("teacher", self.teacher_dir, teacher_args, threads=a.teacher_threads or a.jobs * a.threads,
                       patience=a.teacher_patience)
            self.evaluate("teacher", self.teacher_dir, "teacher", "teacher", 1)
            # Runs start in plan order (FIFO), so a run that waits for others finds them started.
            with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
                for name, size, method, seed in plan:
                    self.jobs[name] = pool.submit(self.run_student, name, size, method, seed)
                for f in list(self.jobs.values()):
                    f.result()
        if not a.dry_run:
            self.record_invocation(start, time.time())
        log(f"all {len(plan)} student runs trained and evaluated under {self.work}")


def run_plan(args):
    """[(name, size, method, seed)] for every student run, decoding-heavy runs spread out;
    the equal-compute runs last (they wait for the runs they are measured against)."""
    def specs(text, default_methods):
        """SIZE:SEEDS[:METHOD+METHOD...] items -> [(size, seeds, methods)]"""
        out = []
        for item in filter(None, text.split(",")):
            size, seeds, *methods = item.split(":")
            out.append((size, int(seeds), methods[0].split("+") if methods else default_methods))
        return out

    sizes = specs(args.sizes, args.methods.split(","))
    eq_sizes = specs(args.eqtime, args.eqtime_methods.split(","))
    for size, _, methods in sizes + eq_sizes:
        if size not in SIZES:
            sys.exit(f"unknown size {size!r}; known: {sorted(SIZES)}")
        for m in methods:
            if m not in METHODS:
                sys.exit(f"unknown method {m!r}; known: {list(METHODS)}")
    plan = [(f"{size}-{method}-s{seed}", size, method, seed)
            for seed in range(1, max(n for _, n, _ in sizes) + 1)
            for size, n, methods in sizes if seed <= n for method in methods]
    trained = {name for name, *_ in plan}
    for size, n, methods in eq_sizes:
        for seed in range(1, n + 1):
            for method in methods:
                if not method.endswith(EQTIME):
                    sys.exit(f"--eqtime {size}: {method} is not an equal-compute (*{EQTIME}) method")
                deps = {f"{size}-{m}-s{seed}" for m in ("tie_kd", method[:-len(EQTIME)])}
                if not deps <= trained:
                    sys.exit(f"--eqtime {size}:{n}: {method} is measured against "
                             f"{', '.join(sorted(deps - trained))}, which the grid does not train")
                plan.append((f"{size}-{method}-s{seed}", size, method, seed))
    return plan


def _commit():
    found = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "?"


def _cuda_available():
    """Whether fairseq-train would find a GPU (asked in a child: this process stays torch-free)."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def _write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


VALID = re.compile(r"\| valid on '[^']*' subset \| loss ([-\d.]+) \|.*?\| num_updates (\d+)")


def validations(log_text):
    """[(update, validation loss)] in update order, over every process of a run."""
    by_update = {int(u): float(loss) for loss, u in VALID.findall(log_text)}  # a repeat (a kill
    return sorted(by_update.items())  # between a validation and its checkpoint) counts once


def best_validation(log_text):
    """(lowest validation loss, its update), or None."""
    found = validations(log_text)
    return min(((loss, u) for u, loss in found), key=lambda x: x[0]) if found else None


def patience_stop(log_text, patience):
    """The update of the validation after which fairseq's ``--patience`` rule says stop (the
    P-th in a row without a strictly lower loss), else None. Computed from the whole log, so it
    survives restarts (fairseq's own counter starts again at 0 in a resumed process)."""
    if not patience:
        return None
    best, since = None, 0
    for update, loss in validations(log_text):
        if best is None or loss < best:
            best, since = loss, 0
        else:
            since += 1
            if since >= patience:
                return update
    return None


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
    Grid(status_argv(sys.argv[1:])).main()
