"""Bad input gives a clear error before any training step (fairseq-train's own code path,
run in-process like fairseq's tests/test_binaries.py); a few representative ones also through
the real fairseq-train process, where the plugin prints them as one line without a traceback."""
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer
from fairseq_cli import train

from tiekd_fairseq.errors import ConfigError

import utils


def run_train(data, save_dir, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data), "--user-dir", utils.PLUGIN, "--save-dir", str(save_dir),
                 *utils.TRAIN_COMMON, *utils.TINY_ARCH, "--max-update", "1", *map(str, extra)]
    )
    train.main(convert_namespace_to_omegaconf(args))


def kd(teacher, *extra):
    return ("--task", "translation_tie_kd", "--teacher-path", teacher, "--criterion", "tie_kd", *extra)


def expect_error(data, tmp_path, args, message):
    steps = []
    real_step = Trainer.train_step
    with mock.patch.object(Trainer, "train_step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k)):
        with pytest.raises(ConfigError, match=message):
            run_train(data, tmp_path / "save", *args)
    # before any training step
    assert not steps and not (tmp_path / "save" / "checkpoint_last.pt").exists()


@pytest.fixture
def copied_data(toy_data, tmp_path):
    dest = tmp_path / "data"
    shutil.copytree(toy_data, dest)
    return dest


def with_cfg(teacher_checkpoint, path, edit):
    """A copy of the teacher checkpoint whose stored config is edited."""
    state = torch.load(teacher_checkpoint, weights_only=True, map_location="cpu")
    edit(state)
    torch.save(state, path)
    return path


def test_task_without_teacher_path(toy_data, tmp_path):
    expect_error(toy_data, tmp_path, ("--task", "translation_tie_kd", "--criterion", "tie_kd"),
                 "--teacher-path is required by translation_tie_kd")


def test_criterion_without_teacher_task(toy_data, tmp_path):
    expect_error(toy_data, tmp_path, ("--criterion", "tie_kd"),
                 "--criterion tie_kd needs a teacher, and task TranslationTask has none")


def test_missing_teacher_file(toy_data, tmp_path):
    expect_error(toy_data, tmp_path, kd(tmp_path / "nope.pt"), "nope.pt: no such file")


def test_teacher_not_a_checkpoint(toy_data, tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("this is not a checkpoint\n")
    expect_error(toy_data, tmp_path, kd(bad), "notes.pt: not a readable fairseq checkpoint")


def test_truncated_teacher(toy_data, teacher_checkpoint, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(teacher_checkpoint.read_bytes()[: os.path.getsize(teacher_checkpoint) // 2])
    expect_error(toy_data, tmp_path, kd(bad), "truncated.pt: not a readable fairseq checkpoint")


def test_plain_state_dict_is_not_a_fairseq_checkpoint(toy_data, tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, bad)
    expect_error(toy_data, tmp_path, kd(bad), r"weights.pt: not a readable fairseq checkpoint")


class Payload:
    """Stands for any object a checkpoint could smuggle in."""


def test_checkpoint_with_arbitrary_object_is_refused(toy_data, teacher_checkpoint, tmp_path):
    evil = with_cfg(teacher_checkpoint, tmp_path / "evil.pt", lambda s: s.update(extra=Payload()))
    expect_error(toy_data, tmp_path, kd(evil), r"evil.pt: not a readable fairseq checkpoint: it pickles test_errors.Payload, which safe loading refuses")


def test_teacher_dictionary_differs(copied_data, teacher_checkpoint, tmp_path):
    lines = (copied_data / "dict.tgt.txt").read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]  # symbols 6 and 7 (after 4 specials) swapped
    (copied_data / "dict.tgt.txt").write_text("\n".join(lines) + "\n")
    a, b = lines[3].split()[0], lines[2].split()[0]
    expect_error(copied_data, tmp_path, kd(teacher_checkpoint),
                 rf"dict.tgt.txt differs from the data's dict.tgt.txt at index 6: teacher has '{a}', data has '{b}'")


def test_teacher_vocabulary_size_differs(copied_data, teacher_checkpoint, tmp_path):
    with open(copied_data / "dict.tgt.txt", "a") as f:
        f.write("extra_word 1\n")
    # the teacher's data dir is gone (trained elsewhere): only sizes can be compared
    moved = with_cfg(teacher_checkpoint, tmp_path / "moved.pt",
                     lambda s: s["cfg"]["task"].update(data=str(tmp_path / "gone")))
    expect_error(copied_data, tmp_path, kd(moved),
                 r"teacher target vocabulary has \d+ symbols \(decoder.embed_tokens.weight\), "
                 r"the data's target dictionary has \d+")


def test_teacher_for_another_language_pair(toy_data, teacher_checkpoint, tmp_path):
    reverse = with_cfg(teacher_checkpoint, tmp_path / "reverse.pt",
                       lambda s: s["cfg"]["task"].update(source_lang="tgt", target_lang="src"))
    expect_error(toy_data, tmp_path, kd(reverse),
                 "teacher was trained with source_lang=tgt, the student task has src")


@pytest.mark.parametrize(
    "option, message",
    [
        (("--kd-topk", "0"), r"--kd-topk must be in \[1, target vocabulary size \d+\], got 0"),
        (("--kd-topk", "100000"), r"--kd-topk must be in \[1, target vocabulary size \d+\], got 100000"),
        (("--kd-rate", "1.5"), r"--kd-rate must be in \(0, 1\], got 1.5"),
        (("--kd-rate", "-0.1"), r"--kd-rate must be in \(0, 1\], got -0.1"),
        (("--kd-rate", "0"), r"--kd-rate 0 leaves label-smoothed CE alone .* use --criterion label_smoothed_cross_entropy"),
        (("--kd-iters", "0"), "--kd-iters must be >= 1, got 0"),
        (("--kd-no-kl", "--kd-no-top1", "--kd-no-topk"), "leave no KD term"),
    ],
)
def test_bad_criterion_options(toy_data, teacher_checkpoint, tmp_path, option, message):
    expect_error(toy_data, tmp_path, kd(teacher_checkpoint, *option), message)


# -- the unlabeled pool ---------------------------------------------------------------------
def pool_args(teacher, pool, *extra):
    return kd(teacher, "--unlabeled-data", pool, *extra)


@pytest.fixture(scope="module")
def toy_pool(toy_data, tmp_path_factory):
    return utils.make_pool(tmp_path_factory.mktemp("pool"), toy_data, n=50)


def test_missing_pool(toy_data, teacher_checkpoint, tmp_path):
    expect_error(toy_data, tmp_path, pool_args(teacher_checkpoint, tmp_path / "nope"),
                 r"--unlabeled-data \S+nope: no binarized dataset \S+nope.bin/.idx; "
                 r"make it with: fairseq-preprocess --only-source")


def test_empty_pool(toy_data, teacher_checkpoint, tmp_path):
    (tmp_path / "empty.src").write_text("")
    utils.cli("fairseq-preprocess", "--only-source", "--source-lang", "src", "--srcdict",
              toy_data / "dict.src.txt", "--trainpref", tmp_path / "empty", "--destdir",
              tmp_path / "pool", "--workers", "1")
    expect_error(toy_data, tmp_path, pool_args(teacher_checkpoint, tmp_path / "pool"),
                 r"the pool is empty \(0 sentences\)")


def test_pool_with_its_own_dictionary(toy_data, teacher_checkpoint, tmp_path):
    utils.write_toy_corpus(tmp_path / "raw", sizes=(("train", 200),))
    with open(tmp_path / "raw" / "train.src", "a") as f:
        f.write("s0 " * 500 + "\n")  # makes s0 the most frequent word: a different order
    utils.cli("fairseq-preprocess", "--only-source", "--source-lang", "src", "--trainpref",
              tmp_path / "raw" / "train", "--destdir", tmp_path / "pool", "--workers", "1")
    expect_error(toy_data, tmp_path, pool_args(teacher_checkpoint, tmp_path / "pool"),
                 r"its dictionary \S+pool/dict.src.txt differs from the data's dict.src.txt at "
                 r"index 4: pool has 's0', data has '\S+'")
    # Without its dictionary file beside it, token ids are still checked.
    with open(tmp_path / "pool" / "dict.src.txt", "a") as f:
        f.write("".join(f"extra{i} 1\n" for i in range(40)))
    for word in ("extra39 ",) * 30:
        with open(tmp_path / "raw" / "more.src", "a") as f:
            f.write(word * 3 + "\n")
    utils.cli("fairseq-preprocess", "--only-source", "--source-lang", "src", "--srcdict",
              tmp_path / "pool" / "dict.src.txt", "--trainpref", tmp_path / "raw" / "more",
              "--destdir", tmp_path / "big", "--workers", "1")
    os.remove(tmp_path / "big" / "dict.src.txt")
    expect_error(toy_data, tmp_path, pool_args(teacher_checkpoint, tmp_path / "big"),
                 r"token id \d+ is outside the data's source dictionary \(\d+ symbols\)")


@pytest.mark.parametrize(
    "option, message",
    [
        (("--unlabeled-per-epoch", "0"), "--unlabeled-per-epoch must be a positive number of sentences, got 0"),
        (("--unlabeled-per-epoch", "-5"), "--unlabeled-per-epoch must be a positive number of sentences, got -5"),
        (("--unlabeled-ratio", "1.2"), r"--unlabeled-ratio must be in \[0, 1\], got 1.2"),
        (("--unlabeled-ratio", "-0.5"), r"--unlabeled-ratio must be in \[0, 1\], got -0.5"),
        (("--pseudo-refresh-epochs", "0"), "--pseudo-refresh-epochs must be >= 1, got 0"),
        (("--pseudo-beam", "0"), "--pseudo-beam must be >= 1, got 0"),
        (("--pseudo-max-tokens", "0"), "--pseudo-max-tokens must be >= 1, got 0"),
    ],
)
def test_bad_pool_options(toy_data, teacher_checkpoint, toy_pool, tmp_path, option, message):
    expect_error(toy_data, tmp_path, pool_args(teacher_checkpoint, toy_pool, *option), message)


def test_pool_options_without_pool(toy_data, teacher_checkpoint, tmp_path):
    expect_error(toy_data, tmp_path, kd(teacher_checkpoint, "--unlabeled-ratio", "0.3"),
                 "--unlabeled-ratio needs an unlabeled pool: add --unlabeled-data POOL_DIR")


# -- the same errors from fairseq-train's own process: one line, no traceback ---------------
def train_process(data, save_dir, *extra):
    return utils.cli("fairseq-train", *utils.train_command(data, save_dir, *utils.TINY_ARCH, "--max-update", "1",
                                                           *extra)[1:], check=False)


@pytest.mark.parametrize("case", ["no_teacher_path", "missing_teacher", "text_file_teacher", "bad_kd_rate", "missing_pool"])
def test_fairseq_train_prints_one_line(case, toy_data, teacher_checkpoint, tmp_path):
    """The whole stderr of a failing fairseq-train ends with ``tiekd: error: <message>`` and
    holds no traceback (nor torch's advice to load untrusted files with weights_only=False)."""
    if case == "no_teacher_path":
        args, expected = ("--task", "translation_tie_kd", "--criterion", "tie_kd"), re.escape(
            "--teacher-path is required by translation_tie_kd: give the teacher's checkpoint (several separated "
            "by ':' form an ensemble)")
    elif case == "missing_teacher":
        args, expected = kd(tmp_path / "nope.pt"), re.escape(f"--teacher-path {tmp_path / 'nope.pt'}: no such file")
    elif case == "text_file_teacher":
        (tmp_path / "notes.pt").write_text("this is not a checkpoint\n")
        args, expected = kd(tmp_path / "notes.pt"), re.escape(
            f"--teacher-path {tmp_path / 'notes.pt'}: not a readable fairseq checkpoint (not a file written by "
            "torch.save: a text file starting 'this is not a checkpoint', not a zip archive or a pickle)")
    elif case == "bad_kd_rate":
        args, expected = kd(teacher_checkpoint, "--kd-rate", "1.5"), re.escape("--kd-rate must be in (0, 1], got 1.5")
    else:
        args, expected = pool_args(teacher_checkpoint, tmp_path / "nope"), (
            rf"--unlabeled-data {re.escape(str(tmp_path / 'nope'))}: no binarized dataset \S+; make it with: "
            r"fairseq-preprocess --only-source .*")
    proc = train_process(toy_data, tmp_path / "save", *args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert re.fullmatch("tiekd: error: " + expected, lines[-1]), proc.stderr[-2000:]
    assert sum("tiekd: error:" in line for line in lines) == 1
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    assert not (tmp_path / "save" / "checkpoint_last.pt").exists()


def test_other_exceptions_keep_their_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import tiekd_fairseq; raise RuntimeError('not a config error')"],
                          capture_output=True, text=True, env=utils.CHILD_ENV, cwd=utils.REPO)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "tiekd: error" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "RuntimeError: not a config error"


SPAWNED = '''
from tiekd_fairseq.teacher import TeacherError

def fail(rank):
    raise TeacherError("--teacher-path t.pt: no such file")
'''


def test_error_in_a_spawned_process_is_one_line(tmp_path):
    """fairseq's multi-GPU path runs training in torch.multiprocessing.spawn children; the parent
    re-raises a child's exception as ProcessRaisedException holding the child's traceback."""
    (tmp_path / "spawned.py").write_text(SPAWNED)
    script = "import tiekd_fairseq, torch.multiprocessing as mp, spawned; mp.spawn(spawned.fail, nprocs=1)"
    env = dict(utils.CHILD_ENV, PYTHONPATH=os.pathsep.join([str(tmp_path), utils.REPO]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "tiekd: error: --teacher-path t.pt: no such file", proc.stderr
    assert "Traceback" not in proc.stderr
