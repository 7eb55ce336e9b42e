"""The teacher at the edges users reach at scale: its own position limits, older checkpoint
formats, output layers TIE-KD cannot use, and its precision under an enclosing autocast."""
import argparse
import re

import pytest
import torch
from fairseq.tasks.translation import TranslationConfig, TranslationTask

import utils
from tiekd_fairseq.teacher import TeacherEnsemble, TeacherError, load_teacher

KD = ("--task", "translation_tie_kd", "--criterion", "tie_kd", "--kd-iters", "2")


@pytest.fixture(scope="module")
def short_teacher(toy_data, tmp_path_factory):
    """A teacher with learned positional embeddings for at most 8 positions (the toy data has
    up to 10 tokens a sentence), trained on what fits."""
    save = tmp_path_factory.mktemp("short_teacher")
    utils.train(toy_data, save, *utils.TINY_ARCH, "--criterion", "label_smoothed_cross_entropy",
                "--encoder-learned-pos", "--decoder-learned-pos", "--max-source-positions", "8",
                "--max-target-positions", "8", "--skip-invalid-size-inputs-valid-test", "--max-update", "2")
    return save / "checkpoint_last.pt"


def test_batches_the_teacher_cannot_take_are_filtered(toy_data, short_teacher, tmp_path):
    """Training and validation batches follow the teacher's limits too (before: IndexError in
    the teacher's position embedding)."""
    proc = utils.train(toy_data, tmp_path, *utils.TINY_ARCH, *KD, "--teacher-path", short_teacher,
                       "--max-update", "3", "--skip-invalid-size-inputs-valid-test", "--log-interval", "1")
    log = proc.stdout + proc.stderr
    assert "accepts at most (8, 8) source/target positions, fewer than the student's (1024, 1024)" in log
    assert len(re.findall(r"\d+ samples have invalid sizes and will be skipped, max_positions=\(8, 8\)", log)) == 2  # train, valid
    assert "num_updates 3" in log or "num_updates=3" in log


def test_without_skipping_fairseq_refuses_the_long_pairs(toy_data, short_teacher, tmp_path):
    proc = utils.train(toy_data, tmp_path, *utils.TINY_ARCH, *KD, "--teacher-path", short_teacher,
                       "--max-update", "1", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "IndexError" not in log
    assert re.search(r"max_positions=\(8, 8\), skip this example with --skip-invalid-size-inputs-valid-test", log)


def teacher_task(data):
    return TranslationTask.setup_task(TranslationConfig(data=str(data), source_lang="src", target_lang="tgt"))


def test_teacher_with_a_namespace_task_config(toy_data, teacher_checkpoint, tmp_path):
    """Checkpoints converted from command-line arguments store `cfg.task` as a Namespace."""
    state = torch.load(teacher_checkpoint, weights_only=True, map_location="cpu")  # plain containers
    state["cfg"]["task"] = argparse.Namespace(**state["cfg"]["task"])
    torch.save(state, tmp_path / "namespace.pt")
    model = load_teacher(str(tmp_path / "namespace.pt"), teacher_task(toy_data))
    assert not any(p.requires_grad for p in model.parameters())
    state["cfg"]["task"].target_lang = "xx"  # the checks still read it
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(TeacherError, match="teacher was trained with target_lang=xx"):
        load_teacher(str(tmp_path / "other.pt"), teacher_task(toy_data))


def test_adaptive_softmax_teacher_is_refused(toy_data, tmp_path):
    utils.train(toy_data, tmp_path, *utils.TINY_ARCH, "--criterion", "adaptive_loss",
                "--adaptive-softmax-cutoff", "10", "--ddp-backend", "legacy_ddp", "--max-update", "1")
    with pytest.raises(TeacherError, match="adaptive softmax output layer"):
        load_teacher(str(tmp_path / "checkpoint_last.pt"), teacher_task(toy_data))


@pytest.mark.parametrize("keep_fp32", [True, False])
def test_teacher_fp32_holds_under_autocast(toy_data, teacher_checkpoint, keep_fp32):
    """fairseq's --amp runs the training step under autocast (validation not): --teacher-fp32
    keeps the teacher in float32 there too."""
    teacher = TeacherEnsemble([load_teacher(str(teacher_checkpoint), teacher_task(toy_data))], keep_fp32)
    src = torch.randint(4, 20, (3, 7))
    lengths, prev = torch.full((3,), 7), torch.randint(4, 20, (3, 5))
    plain = teacher.logits(prev, teacher.encode(src, lengths), lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = teacher.logits(prev, teacher.encode(src, lengths), lengths)
    if keep_fp32:
        assert under.dtype == torch.float32 and torch.equal(under, plain)
    else:  # the teacher follows the student's autocast
        assert under.dtype == torch.bfloat16
