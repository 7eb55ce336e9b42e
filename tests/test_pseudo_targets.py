"""Unlabeled source pool and sequence-level KD: teacher pseudo-targets through the real CLIs."""
import json
import os
import re

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

import utils
from tiekd_fairseq.pseudo_targets import PseudoPairs, selection_sha256, write_pairs
from tiekd_fairseq.unlabeled_pool import pseudo_count, resample, shard_indices


# -- bookkeeping (no CLI) -------------------------------------------------------------------
def test_shards_walk_the_whole_pool_before_repeating():
    pool, per = 10, 4
    walk = np.concatenate([shard_indices(pool, per, s, seed=3) for s in range(5)])
    assert sorted(walk[:10]) == list(range(10))  # first pass: every sentence once
    assert sorted(walk[10:20]) == list(range(10))  # second pass: a new order of all of them
    assert not np.array_equal(walk[:10], walk[10:20])
    assert np.array_equal(shard_indices(pool, per, 2, seed=3), walk[8:12])  # seeded, resumable
    assert not np.array_equal(shard_indices(pool, per, 0, seed=4), walk[:4])


def test_pseudo_share():
    assert pseudo_count(100, 40, None) == (100, 40)
    assert pseudo_count(100, 40, 0.2) == (100, 25)  # 25 / 125 = 0.2
    assert pseudo_count(100, 40, 0.5) == (100, 100)  # more than decoded: resampled
    assert pseudo_count(100, 40, 1.0) == (0, 40)
    assert pseudo_count(100, 40, 0.0) == (100, 0)
    picks = resample(40, 100, seed=1, epoch=2)
    assert len(picks) == 100 and np.bincount(picks, minlength=40).min() == 2
    assert np.array_equal(picks, resample(40, 100, seed=1, epoch=2))
    assert not np.array_equal(picks, resample(40, 100, seed=1, epoch=3))


def test_cache_file_round_trip(tmp_path):
    """fairseq binaries sorted by source, whatever order the ranks decoded in; the rows that
    do not fit one chunk of the writer come out the same."""
    pairs = {7: [5, 9, 2], 0: [2], 3: [11, 2]}
    ids = np.array(list(pairs))
    for name, chunk in (("a", 1 << 20), ("b", 2)):
        write_pairs(str(tmp_path / name), ids, np.array([len(t) for t in pairs.values()]),
                    np.concatenate([np.array(t) for t in pairs.values()]), {"kind": "test"}, vocab_size=20,
                    rows_per_chunk=chunk)
    back = PseudoPairs(str(tmp_path / "a"))
    assert {i: t.tolist() for i, t in back.as_dict().items()} == pairs and list(back.source_index) == [0, 3, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{n}.{ext}" for n in "ab" for ext in ("bin", "idx", "json", "src.npy")]
    assert all((tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()
               for ext in ("bin", "idx", "src.npy"))
    assert (tmp_path / "a.bin").stat().st_size == 6 * 2  # uint16 ids for a small vocabulary
    assert '"kind": "test"' in (tmp_path / "a.json").read_text()
    assert selection_sha256(back, [0, 1]) != selection_sha256(back, [1, 0])


# -- through fairseq-train ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(toy_data, tmp_path_factory):
    return utils.make_pool(tmp_path_factory.mktemp("pool"), toy_data, n=300)


def pool_student(data, save, teacher, pool_dir, *extra, check=True):
    return utils.train(data, save, *utils.TINY_ARCH, "--task", "translation_tie_kd",
                       "--teacher-path", teacher, "--criterion", "tie_kd", "--kd-iters", "2",
                       "--unlabeled-data", pool_dir, "--unlabeled-per-epoch", "100", *extra,
                       check=check)


def generated(data, checkpoint, subset, *options):
    """{sentence id: hypothesis} printed by fairseq-generate."""
    out = utils.cli("fairseq-generate", data, "--user-dir", utils.PLUGIN, "--path", checkpoint,
                    "--gen-subset", subset, "--cpu", "--required-batch-size-multiple", "1", *options)
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", out.stdout, re.M)}


def cache_files(save):
    return {p.name: p.read_bytes() for p in sorted((save / "pseudo_targets").glob("*"))}


def cached_pairs(directory, pattern):
    """{source index: target ids} of the one cache matching ``pattern`` in ``directory``."""
    (path,) = directory.glob(pattern + ".json")
    return PseudoPairs(str(path)[: -len(".json")]).as_dict()


def shard_pairs(save, shard):
    return cached_pairs(save / "pseudo_targets", f"pool-shard{shard:04d}-*")


def targets_only(files):
    """The decoded pairs, without the .json (it records the decoding time)."""
    return {k: v for k, v in files.items() if not k.endswith(".json")}


def test_each_epoch_trains_on_a_new_shard(toy_data, teacher_checkpoint, pool, tmp_path):
    proc = pool_student(toy_data, tmp_path, teacher_checkpoint, pool, "--max-epoch", "2")
    files = cache_files(tmp_path)
    assert len(files) == 8, files.keys()  # shard 0 and 1: .bin/.idx/.src.npy/.json each, no shard 2
    first, second = shard_pairs(tmp_path, 0), shard_pairs(tmp_path, 1)
    assert len(first) == len(second) == 100 and not first.keys() & second.keys()
    epochs = utils.log_lines(proc, "pseudo pairs (pool shard")
    assert [re.search(r"epoch (\d+): training on 1,500 labeled \+ 100 pseudo", l).group(1)
            for l in epochs] == ["001", "002"]
    assert len(utils.log_lines(proc, "sentences/s")) >= 2  # progress while the teacher decodes
    assert "pool_sha256" in files[next(n for n in files if n.endswith(".json"))].decode()


@pytest.mark.parametrize("beam,lenpen", [(1, 1.0), (4, 0.6)])
def test_pseudo_targets_equal_fairseq_generate(toy_data, teacher_checkpoint, tmp_path, beam, lenpen):
    pool_dir = utils.make_pool(tmp_path / "pool", toy_data, n=60, seed=5, parallel_copy=True)
    decoding = ("--pseudo-beam", beam, "--pseudo-lenpen", lenpen,
                "--pseudo-max-len-a", "1.2", "--pseudo-max-len-b", "10")
    pool_student(toy_data, tmp_path / "save", teacher_checkpoint, pool_dir, "--max-update", "1",
                 "--unlabeled-per-epoch", "60", *decoding)
    ours = shard_pairs(tmp_path / "save", 0)
    theirs = generated(tmp_path / "pool" / "as_test", teacher_checkpoint, "test", "--beam", beam,
                       "--lenpen", lenpen, "--max-len-a", "1.2", "--max-len-b", "10", "--batch-size", "16")
    tgt_dict = Dictionary.load(str(toy_data / "dict.tgt.txt"))
    assert len(theirs) == len(ours) == 60
    assert {i: tgt_dict.string(t) for i, t in ours.items()} == theirs
    assert all(t[-1].item() == tgt_dict.eos() for t in ours.values())


def test_restart_reuses_cache_and_matches_uninterrupted_run(toy_data, teacher_checkpoint, pool, tmp_path):
    """A run killed mid-epoch 2 (a real SIGKILL) and restarted from checkpoint_last.pt decodes
    nothing, trains on byte-identical pairs and ends with the uninterrupted run's weights."""
    args = ("--max-epoch", "3", "--save-interval-updates", "12")
    full = pool_student(toy_data, tmp_path / "full", teacher_checkpoint, pool, *args)

    killed_dir = tmp_path / "killed"
    cmd = utils.train_command(toy_data, killed_dir, *utils.TINY_ARCH, "--task", "translation_tie_kd",
                              "--teacher-path", teacher_checkpoint, "--criterion", "tie_kd",
                              "--kd-iters", "2", "--unlabeled-data", pool, "--unlabeled-per-epoch",
                              "100", *args)
    # SIGKILL as soon as fairseq reports the mid-epoch-2 checkpoint (and checkpoint_last) saved
    seen = utils.run_until(cmd, "checkpoint_2_12.pt (epoch 2 @ 12 updates")
    assert "Saved checkpoint" in seen.splitlines()[-1] and "| train | epoch 002" not in seen
    before = cache_files(killed_dir)
    assert len(before) == 8  # shards 0 and 1; the kill came before epoch 3
    resumed = utils.cli("fairseq-train", *cmd[1:])
    log = resumed.stdout + resumed.stderr
    assert re.search(r"Loaded checkpoint \S+checkpoint_last.pt \(epoch 2 @ 12 updates\)", log)
    assert "teacher decoded" not in log.split("pool-shard0002")[0]  # shard 1 came from the cache
    assert re.search(r"pool-shard0001: reusing 100 cached", log)
    after = cache_files(killed_dir)
    assert {k: v for k, v in after.items() if "shard0002" not in k} == before  # byte-identical
    assert targets_only(after) == targets_only(cache_files(tmp_path / "full"))
    # Same pairs, same data order, same seeds: the same training.
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(killed_dir / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    valid = lambda proc: utils.log_lines(proc, "| valid |")[-1].split("| loss ")[1].split()[0]
    assert valid(full) == valid(resumed)


def test_seq_kd_trains_on_the_teachers_translations(toy_data, teacher_checkpoint, tmp_path):
    decoding = ("--beam", "2", "--max-len-a", "1.2", "--max-len-b", "10")
    proc = utils.train(toy_data, tmp_path, *utils.TINY_ARCH, "--task", "translation_tie_kd",
                       "--teacher-path", teacher_checkpoint, "--seq-kd",
                       *[a.replace("--", "--pseudo-") if a.startswith("--") else a for a in decoding],
                       "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                       "--max-epoch", "2")
    pairs = cached_pairs(tmp_path / "pseudo_targets", "seq-kd-*")
    assert len(utils.log_lines(proc, "seq-kd: teacher decoded 1500 sentences in")) == 1  # once
    # without a pool fairseq builds the training set once and keeps it for every epoch
    assert len(utils.log_lines(proc, "training on 1,500 pairs whose targets are the teacher's")) == 1
    assert len(utils.log_lines(proc, "| train | epoch")) == 2
    theirs = generated(toy_data, teacher_checkpoint, "train", *decoding, "--batch-size", "128")
    tgt_dict = Dictionary.load(str(toy_data / "dict.tgt.txt"))
    assert len(theirs) == len(pairs) == 1500
    assert {i: tgt_dict.string(t) for i, t in pairs.items()} == theirs


def test_students_of_one_teacher_share_a_cache_dir(toy_data, teacher_checkpoint, pool, tmp_path):
    """seq-KD targets do not depend on the student's seed: a second student decodes nothing.
    Pool shards do (the walk is seeded): each seed gets its own shard file."""
    cache = tmp_path / "cache"
    # whole epochs: a fairseq-train stopped by --max-update mid-epoch once aborted at exit
    # ("terminate called without an active exception") after saving everything
    common = ("--teacher-path", teacher_checkpoint, "--pseudo-cache-dir", cache, "--max-epoch", "1")
    logs = [utils.train(toy_data, tmp_path / f"seq{seed}", *utils.TINY_ARCH, "--task", "translation_tie_kd",
                        "--seq-kd", "--criterion", "label_smoothed_cross_entropy", "--seed", seed, *common)
            for seed in (1, 2)]
    assert len(utils.log_lines(logs[0], "seq-kd: teacher decoded 1500 sentences")) == 1
    assert len(utils.log_lines(logs[1], "seq-kd: teacher decoded")) == 0
    assert len(utils.log_lines(logs[1], f"seq-kd: reusing 1500 cached pseudo-target pairs from {cache}")) == 1
    for seed in (1, 2):
        pool_student(toy_data, tmp_path / f"pool{seed}", teacher_checkpoint, pool, "--seed", seed,
                     "--pseudo-cache-dir", cache, "--max-epoch", "1")
    assert len(list(cache.glob("seq-kd-*.json"))) == 1
    assert len(list(cache.glob("pool-shard0000-*.json"))) == 2
    assert not any((tmp_path / name / "pseudo_targets").exists() for name in ("seq1", "seq2", "pool1", "pool2"))


def test_too_long_sources_are_skipped_and_counted(toy_data, teacher_checkpoint, pool, tmp_path):
    proc = pool_student(toy_data, tmp_path, teacher_checkpoint, pool, "--max-update", "1",
                        "--max-source-positions", "8", "--skip-invalid-size-inputs-valid-test")
    lengths = [len(l.split()) + 1 for l in open(os.path.join(os.path.dirname(pool), "pool.src"))]  # + eos
    walk = shard_indices(len(lengths), 100, 0, seed=1)
    too_long = sum(lengths[i] > 8 for i in walk)
    assert too_long > 0
    line = utils.log_lines(proc, "pool-shard0000: teacher decoded")[-1]
    assert f"decoded {100 - too_long} sentences in" in line and f"{too_long} skipped as longer" in line
    assert len(shard_pairs(tmp_path, 0)) == 100 - too_long


def test_sampled_pseudo_targets_are_seeded(toy_data, teacher_checkpoint, pool, tmp_path):
    sampling = ("--max-update", "1", "--pseudo-sampling", "--pseudo-sampling-topk", "5", "--pseudo-beam", "1")
    for name in ("a", "b"):
        pool_student(toy_data, tmp_path / name, teacher_checkpoint, pool, *sampling)
    pool_student(toy_data, tmp_path / "c", teacher_checkpoint, pool, *sampling, "--seed", "2")
    pool_student(toy_data, tmp_path / "greedy", teacher_checkpoint, pool, "--max-update", "1", "--pseudo-beam", "1")
    a, b = shard_pairs(tmp_path / "a", 0), shard_pairs(tmp_path / "b", 0)
    assert a.keys() == b.keys() and all(torch.equal(a[i], b[i]) for i in a)  # same seed, same samples
    greedy = shard_pairs(tmp_path / "greedy", 0)
    assert sum(not torch.equal(a[i], greedy[i]) for i in a) > 10  # sampled, not the argmax path
    c = shard_pairs(tmp_path / "c", 0)  # another seed walks to another shard and draws anew
    assert c.keys() != a.keys()


def test_seq_kd_on_sharded_data_decodes_each_shard(toy_data, teacher_checkpoint, tmp_path):
    """--data a:b: epoch 2 trains on the teacher's translations of shard b's own sources (before:
    shard a's translations were reused for shard b's sources, index by index)."""
    raw = tmp_path / "raw"
    utils.write_toy_corpus(raw, sizes=(("train", 400), ("valid", 20), ("test", 10)))
    shard_b = tmp_path / "raw_b"
    utils.write_toy_corpus(shard_b, sizes=(("train", 300), ("valid", 20), ("test", 10)))
    for lang in ("src", "tgt"):  # shard b: other sentences than shard a's
        lines = (shard_b / f"train.{lang}").read_text().splitlines()[::-1]
        (shard_b / f"train.{lang}").write_text("\n".join(lines) + "\n")
    dicts = ("--srcdict", toy_data / "dict.src.txt", "--tgtdict", toy_data / "dict.tgt.txt")
    utils.preprocess(raw, tmp_path / "a", *dicts)
    utils.preprocess(shard_b, tmp_path / "b", *dicts)
    decoding = ("--beam", "1", "--max-len-a", "1.2", "--max-len-b", "10")
    proc = utils.train(f"{tmp_path / 'a'}:{tmp_path / 'b'}", tmp_path / "save", *utils.TINY_ARCH,
                       "--task", "translation_tie_kd", "--teacher-path", teacher_checkpoint, "--seq-kd",
                       *[a.replace("--", "--pseudo-") if a.startswith("--") else a for a in decoding],
                       "--criterion", "label_smoothed_cross_entropy", "--max-epoch", "2")
    epochs = utils.log_lines(proc, "whose targets are the teacher's translations")
    assert [re.search(r"training on ([\d,]+) pairs", line).group(1) for line in epochs] == ["400", "300"]
    caches = [re.search(r"\((?:--seq-kd, )(seq-kd-\w+)\)", line).group(1) for line in epochs]
    assert caches[0] != caches[1]
    tgt_dict = Dictionary.load(str(toy_data / "dict.tgt.txt"))
    for shard, cache in zip(("a", "b"), caches):
        pairs = cached_pairs(tmp_path / "save" / "pseudo_targets", cache)
        theirs = generated(tmp_path / shard, teacher_checkpoint, "train", *decoding, "--batch-size", "128")
        assert {i: tgt_dict.string(t) for i, t in pairs.items()} == theirs


def test_cache_key_holds_the_position_limits(toy_data, teacher_checkpoint, pool, tmp_path):
    """Students sharing --pseudo-cache-dir with other --max-source-positions do not reuse each
    other's pairs: which sources are skipped depends on them."""
    cache = tmp_path / "cache"
    runs = [pool_student(toy_data, tmp_path / name, teacher_checkpoint, pool, "--max-update", "1",
                         "--pseudo-cache-dir", cache, *extra)
            for name, extra in (("long", ()), ("short", ("--max-source-positions", "8",
                                                          "--skip-invalid-size-inputs-valid-test")))]
    decoded = [re.search(r"pool-shard0000: teacher decoded (\d+) sentences in", proc.stdout + proc.stderr)
               for proc in runs]
    assert decoded[0].group(1) == "100" and 0 < int(decoded[1].group(1)) < 100  # both decoded
    metas = sorted(json.loads(p.read_text())["max_positions"] for p in cache.glob("pool-shard0000-*.json"))
    assert metas == [[8, 1024], [1024, 1024]]


def test_pseudo_pairs_train_memory_mapped(toy_data, teacher_checkpoint, pool, tmp_path):
    """The pairs an epoch trains on are views of fairseq binaries (sources and targets), not
    per-pair Python tensors."""
    from fairseq.data import ConcatDataset
    from fairseq.data.indexed_dataset import MMapIndexedDataset
    from omegaconf import OmegaConf

    from tiekd_fairseq.pseudo_targets import RowSubset
    from tiekd_fairseq.task import TranslationTieKDTask

    pool_student(toy_data, tmp_path, teacher_checkpoint, pool, "--max-update", "1")
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    task = TranslationTieKDTask.setup_task(OmegaConf.create(state["cfg"]["task"]))
    task.load_dataset("train", epoch=1)  # the shard comes from the cache written above
    train = task.datasets["train"]
    assert isinstance(train.src, ConcatDataset) and isinstance(train.tgt, ConcatDataset)
    labeled_src, pseudo_src = train.src.datasets
    _, pseudo_tgt = train.tgt.datasets
    assert isinstance(pseudo_src, RowSubset) and isinstance(pseudo_src.dataset, MMapIndexedDataset)
    assert isinstance(pseudo_tgt, RowSubset) and isinstance(pseudo_tgt.dataset, MMapIndexedDataset)
    assert len(pseudo_src) == len(pseudo_tgt) == 100


def test_epoch_rows_pair_each_pool_source_with_its_own_translation(toy_data, teacher_checkpoint, pool, tmp_path):
    """The dataset an epoch trains on: labeled pairs, then pseudo pairs whose target is the
    cached translation of that very pool sentence; --unlabeled-ratio 0.25 resamples them to
    1/3 of the labeled count; --pseudo-refresh-epochs 2 keeps shard 0 for epochs 1-2, shard 1
    from epoch 3."""
    from omegaconf import OmegaConf

    from tiekd_fairseq.task import TranslationTieKDTask

    pool_student(toy_data, tmp_path, teacher_checkpoint, pool, "--max-update", "1", "--unlabeled-per-epoch", "40",
                 "--unlabeled-ratio", "0.25", "--pseudo-refresh-epochs", "2")
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    task = TranslationTieKDTask.setup_task(OmegaConf.create(state["cfg"]["task"]))
    chosen = {}
    for epoch in (1, 2, 3):
        task.load_dataset("train", epoch=epoch)  # epoch 3 decodes shard 1 (in this process)
        train = task.datasets["train"]
        n_labeled = len(train.src.datasets[0])
        assert n_labeled == 1500 and len(train) == n_labeled + 500  # 0.25 / 0.75 x 1,500
        translations = shard_pairs(tmp_path, (epoch - 1) // 2)
        by_source = {tuple(task.pool[i].tolist()): t.tolist() for i, t in translations.items()}
        assert len(by_source) == 40  # the pool's sentences are distinct: the lookup is one-to-one
        rows = [(tuple(train.src[j].tolist()), train.tgt[j].tolist()) for j in range(n_labeled, len(train))]
        assert all(by_source.get(src) == tgt for src, tgt in rows)
        chosen[epoch] = {src for src, _ in rows}
        assert chosen[epoch] == set(by_source)  # 500 draws of 40 pairs: each one at least 12 times
    assert not chosen[1] & chosen[3]  # a new shard: other pool sentences
