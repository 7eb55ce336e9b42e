"""Two CPU processes (gloo) against one process with the same effective batch.

fairseq gives rank r the batches r, r+W, ... of one shuffled list, so W ranks at
--update-freq 1 see, per update, exactly the batches one process sees at --update-freq W.
Dropout is off because each rank seeds it identically, where one process would draw on.
"""
import re
import socket
import subprocess

import pytest

import utils

TOLERANCE = 2e-3  # fairseq's log prints loss and gnorm with 3 decimals


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cmd, world):
    port = free_port()
    procs = [
        subprocess.Popen(
            cmd + ["--distributed-world-size", str(world), "--distributed-rank", str(rank),
                   "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
                   "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=utils.CHILD_ENV)
        for rank in range(world)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    return outs


def first_update(log):
    line = next(l for l in log.splitlines() if "train_inner" in l and "num_updates=1," in l)
    return {k: float(re.search(rf"\b{k}=([0-9.]+)", line).group(1)) for k in ("loss", "gnorm", "kd_kl", "ce")}


@pytest.fixture(scope="module")
def runs(toy_data, teacher_checkpoint, tmp_path_factory):
    pool = utils.make_pool(tmp_path_factory.mktemp("pool"), toy_data, n=120)
    root = tmp_path_factory.mktemp("dist")

    def cmd(save, *extra):
        return utils.train_command(
            toy_data, root / save, *utils.TINY_ARCH, "--task", "translation_tie_kd",
            "--teacher-path", teacher_checkpoint, "--criterion", "tie_kd", "--kd-iters", "2",
            "--unlabeled-data", pool, "--unlabeled-per-epoch", "60", "--dropout", "0",
            "--max-tokens", "600", "--max-update", "2", "--log-interval", "1", *extra)

    single = utils.cli("fairseq-train", *cmd("one", "--update-freq", "2")[1:])
    return single.stdout + single.stderr, run_ranks(cmd("two"), 2), root


def test_two_ranks_match_one_process(runs):
    single, (rank0, _), _ = runs
    one, two = first_update(single), first_update(rank0)
    for key in one:
        assert abs(one[key] - two[key]) <= TOLERANCE, (key, one, two)


def test_every_rank_trains_on_the_same_pseudo_pairs(runs):
    single, (rank0, rank1), root = runs
    line = next(l for l in rank0.splitlines() if "epoch 001: training on" in l)
    assert "the same on all 2 ranks" in line  # checked by an all_gather of the fingerprints
    sha = lambda log: re.search(r"sha256 ([0-9a-f]+)", log).group(1)
    assert sha(line) == sha(single)  # and the same as one process decoding the whole shard
    assert "teacher decoded 30/30 sentences on rank 0" in rank0  # each rank decoded half
    for ext in ("bin", "idx", "src.npy"):  # (the .json records the decoding time)
        (one,) = (root / "one" / "pseudo_targets").glob(f"*.{ext}")
        (two,) = (root / "two" / "pseudo_targets").glob(f"*.{ext}")
        assert one.read_bytes() == two.read_bytes()


def test_teacher_loaded_once_per_process_and_not_wrapped(runs):
    single, (rank0, _), _ = runs
    assert rank0.count("frozen") == 1  # rank 1 logs warnings only
    params = lambda log: re.search(r"num\. shared model params: ([0-9,]+)", log).group(1)
    assert params(rank0) == params(single)  # what DDP wraps is the student alone


@pytest.fixture(scope="module")
def online_runs(toy_data, teacher_checkpoint, tmp_path_factory):
    pool = utils.make_pool(tmp_path_factory.mktemp("online_pool"), toy_data, n=120)
    root = tmp_path_factory.mktemp("online")

    def cmd(save, *extra):
        return utils.train_command(
            toy_data, root / save, *utils.TINY_ARCH, "--task", "translation_tie_kd",
            "--teacher-path", teacher_checkpoint, "--criterion", "tie_kd", "--kd-iters", "2",
            "--unlabeled-data", pool, "--unlabeled-online", "--dropout", "0",
            "--max-tokens", "600", "--max-update", "2", "--log-interval", "1", *extra)

    single = utils.cli("fairseq-train", *cmd("one", "--update-freq", "2")[1:])
    return single.stdout + single.stderr, run_ranks(cmd("two"), 2)


def test_online_ranks_draw_what_update_freq_draws(online_runs):
    """Rank r's micro-batch takes slot r, one process's micro-batch m takes slot m: two ranks
    draw disjoint sentences, and together those of one process at --update-freq 2 (the same
    first update: loss, gradient norm and pseudo batch size)."""
    single, (rank0, _) = online_runs
    one, two = first_update(single), first_update(rank0)
    for key in one:
        assert abs(one[key] - two[key]) <= TOLERANCE, (key, one, two)
    pseudo = lambda log: float(re.search(r"pseudo_bsz=([\d.]+),.*num_updates=1,", log).group(1))
    assert pseudo(single) == pseudo(rank0) > 0
