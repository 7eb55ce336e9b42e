"""Tiny data and real CLI runs for the end-to-end tests (after fairseq's tests/utils.py)."""
import os
import random
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "tiekd_fairseq")
BIN = os.path.dirname(sys.executable)

# A learnable toy "language pair": each source word maps to a fixed target word and the
# sentence is reversed, so a tiny transformer learns it in a few hundred updates.
SRC_WORDS = [f"s{i}" for i in range(24)]
TGT_WORDS = {w: f"t{(i * 7) % 24}" for i, w in enumerate(SRC_WORDS)}


def toy_pairs(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        src = [rng.choice(SRC_WORDS) for _ in range(rng.randint(2, 9))]
        yield " ".join(src), " ".join(TGT_WORDS[w] for w in reversed(src))


def write_toy_corpus(raw_dir, sizes=(("train", 1500), ("valid", 60), ("test", 40))):
    os.makedirs(raw_dir, exist_ok=True)
    for seed, (split, n) in enumerate(sizes):
        with open(f"{raw_dir}/{split}.src", "w") as fs, open(f"{raw_dir}/{split}.tgt", "w") as ft:
            for s, t in toy_pairs(n, seed):
                fs.write(s + "\n")
                ft.write(t + "\n")


# Child processes: unbuffered logs, one thread each (the machine has 2 cores).
CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def cli(name, *args, check=True, timeout=600):
    """Run a real console script (fairseq-train, ...) of this Python environment."""
    proc = subprocess.run(
        [os.path.join(BIN, name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
        env=CHILD_ENV,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def preprocess(raw_dir, dest, *extra):
    return cli(
        "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", f"{raw_dir}/train", "--validpref", f"{raw_dir}/valid",
        "--testpref", f"{raw_dir}/test", "--destdir", dest, "--workers", "1", *extra,
    )


TRAIN_COMMON = (
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50", "--max-tokens", "1500",
    "--no-progress-bar", "--log-format", "simple", "--log-interval", "20",
    "--num-workers", "0", "--seed", "1", "--cpu", "--no-epoch-checkpoints",
)


def train(data, save_dir, *extra, check=True):
    return cli("fairseq-train", *train_command(data, save_dir, *extra)[1:], check=check)


def train_command(data, save_dir, *extra):
    return [os.path.join(BIN, "fairseq-train"), *map(str, (data, "--user-dir", PLUGIN, "--save-dir",
                                                           save_dir, *TRAIN_COMMON, *extra))]


def run_until(cmd, marker, timeout=600):
    """Start ``cmd``, SIGKILL it as soon as a line of its output contains ``marker``; the
    output seen so far. Fails if the command ends (or times out) before the marker."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=CHILD_ENV)
    seen = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                proc.kill()
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    text = "".join(seen)
    if marker not in text:
        raise AssertionError(f"{cmd[0]} ended before printing {marker!r}:\n{text[-3000:]}")
    return text


TINY_ARCH = ("--arch", "tie_kd_transformer_tiny", "--encoder-layers", "1", "--decoder-layers", "1",
             "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
             "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128")


def make_pool(root, data, n=300, seed=99, parallel_copy=False):
    """An unlabeled source pool of toy sentences binarized with the data's source dictionary
    (fairseq-preprocess --only-source). With ``parallel_copy``, the same sources (and their
    true targets) also become the test split of ROOT/as_test, for fairseq-generate."""
    os.makedirs(root, exist_ok=True)
    with open(f"{root}/pool.src", "w") as fs, open(f"{root}/pool.tgt", "w") as ft:
        for s, t in toy_pairs(n, seed):
            fs.write(s + "\n")
            ft.write(t + "\n")
    cli("fairseq-preprocess", "--only-source", "--source-lang", "src", "--srcdict",
        f"{data}/dict.src.txt", "--trainpref", f"{root}/pool", "--destdir", f"{root}/bin", "--workers", "1")
    if parallel_copy:
        cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--srcdict",
            f"{data}/dict.src.txt", "--tgtdict", f"{data}/dict.tgt.txt", "--testpref", f"{root}/pool",
            "--destdir", f"{root}/as_test", "--workers", "1")
    return f"{root}/bin"


def log_lines(proc, marker):
    return [l for l in (proc.stdout + proc.stderr).splitlines() if marker in l]
