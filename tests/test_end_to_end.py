"""Through the real CLIs: fairseq-preprocess -> fairseq-train (teacher) -> fairseq-train
--criterion tie_kd (student) -> fairseq-generate -> BLEU."""
import re

import pytest
import sacrebleu
import torch

import utils


def generate(data, checkpoint, *extra):
    out = utils.cli("fairseq-generate", data, "--user-dir", utils.PLUGIN, "--path", checkpoint,
                    "--beam", "4", "--lenpen", "0.6", "--batch-size", "64", "--cpu",
                    # fairseq 0.12 silently drops some sentences with the default multiple of 8
                    "--required-batch-size-multiple", "1", *extra)
    hyps, refs = {}, {}
    for line in out.stdout.splitlines():
        kind, _, rest = line.partition("-")
        if kind in ("H", "T"):
            idx, *fields = rest.split("\t")
            (hyps if kind == "H" else refs)[int(idx)] = fields[-1]
    assert hyps and hyps.keys() == refs.keys() == set(range(40)), out.stderr[-2000:]
    order = sorted(hyps)
    return [hyps[i] for i in order], [refs[i] for i in order], out


def kd_student(data, save, teacher, *extra):
    return utils.train(data, save, *utils.TINY_ARCH, "--task", "translation_tie_kd",
                       "--teacher-path", teacher, "--criterion", "tie_kd", "--kd-iters", "3",
                       "--max-epoch", "12", *extra)


@pytest.fixture(scope="module")
def tie_kd_student(toy_data, teacher_checkpoint, tmp_path_factory):
    save = tmp_path_factory.mktemp("student")
    proc = kd_student(toy_data, save, teacher_checkpoint)
    return save, proc


@pytest.fixture(scope="module")
def ce_student(toy_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("ce_student")
    utils.train(toy_data, save, *utils.TINY_ARCH, "--criterion", "label_smoothed_cross_entropy",
                "--label-smoothing", "0.1", "--max-epoch", "12")
    return save


def test_teacher_learns_the_toy_task(toy_data, teacher_checkpoint):
    hyps, refs, _ = generate(toy_data, teacher_checkpoint)
    assert sacrebleu.corpus_bleu(hyps, [refs]).score > 50


def test_tie_kd_student_logs_every_term(tie_kd_student):
    _, proc = tie_kd_student
    log = proc.stdout + proc.stderr
    train_lines = [l for l in log.splitlines() if "| train |" in l]
    valid_lines = [l for l in log.splitlines() if "| valid |" in l]
    assert len(train_lines) == 12 and len(valid_lines) == 12
    for name in ("loss", "nll_loss", "ppl", "ce", "kd_kl", "kd_top1", "kd_topk", "teacher_top1_agree"):
        assert re.search(rf"\| {name} [0-9.]+ ", train_lines[-1]), name
        assert re.search(rf"\| {name} [0-9.]+ ", valid_lines[-1]), name
    agree = [float(re.search(r"teacher_top1_agree ([0-9.]+)", l).group(1)) for l in train_lines]
    assert agree[-1] > agree[0] + 0.2  # the student learns to agree with the teacher
    # Validation `loss` is the label-smoothed CE, comparable with plain CE runs.
    last = valid_lines[-1]
    assert re.search(r"\| loss ([0-9.]+)", last).group(1) == re.search(r"\| ce ([0-9.]+)", last).group(1)


def test_tie_kd_student_generates_with_bleu(toy_data, tie_kd_student):
    save, _ = tie_kd_student
    hyps, refs, out = generate(toy_data, save / "checkpoint_best.pt")
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert bleu > 10, bleu  # 1-layer, 64-dim student after 12 short epochs; untrained: < 2
    assert "Generate test with beam=4: BLEU4" in out.stdout + out.stderr


def test_student_checkpoint_holds_no_teacher(tie_kd_student, ce_student, teacher_checkpoint):
    kd = torch.load(tie_kd_student[0] / "checkpoint_best.pt", weights_only=True, map_location="cpu")
    ce = torch.load(ce_student / "checkpoint_best.pt", weights_only=True, map_location="cpu")
    teacher = torch.load(teacher_checkpoint, weights_only=True, map_location="cpu")
    assert {k: v.shape for k, v in kd["model"].items()} == {k: v.shape for k, v in ce["model"].items()}
    assert kd["criterion"] is None  # no parameters live on the criterion
    # Nothing teacher-sized anywhere: same number of tensor elements as the CE student.
    def numel(obj):
        if torch.is_tensor(obj):
            return obj.numel()
        if isinstance(obj, dict):
            return sum(numel(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(numel(v) for v in obj)
        return 0
    # (extra_state holds logged meters, which differ in number between criterions)
    assert numel({k: v for k, v in kd.items() if k != "extra_state"}) == numel(
        {k: v for k, v in ce.items() if k != "extra_state"})
    assert numel(kd["model"]) == numel(ce["model"])
    assert numel(teacher["model"]) > numel(kd["model"])


def test_teacher_ensemble(toy_data, teacher_checkpoint, second_teacher_checkpoint, tmp_path):
    """Two different teachers through fairseq-train (their average: test_criterion.py)."""
    both = f"{teacher_checkpoint}:{second_teacher_checkpoint}"
    proc = kd_student(toy_data, tmp_path, both, "--max-epoch", "1", "--kd-iters", "2")
    assert proc.stderr.count("frozen") + proc.stdout.count("frozen") == 2


def test_vanilla_word_kd_setting(toy_data, teacher_checkpoint, tmp_path):
    proc = kd_student(toy_data, tmp_path, teacher_checkpoint, "--max-epoch", "1",
                      "--kd-iters", "1", "--kd-no-top1", "--kd-no-topk")
    line = [l for l in (proc.stdout + proc.stderr).splitlines() if "| train |" in l][-1]
    assert "kd_top1 0 " in line and "kd_topk 0 " in line
    assert float(re.search(r"kd_kl ([0-9.]+)", line).group(1)) > 0


def test_option_help_lists_every_plugin_option():
    import subprocess
    import sys

    from tiekd_fairseq.criterion import TieKDCriterionConfig

    out = subprocess.run([sys.executable, "-m", "tiekd_fairseq"], capture_output=True, text=True,
                         check=True, cwd=utils.REPO).stdout
    names = [n for n in TieKDCriterionConfig.__dataclass_fields__ if n != "sentence_avg" and not n.startswith("_")]
    for name in names + ["teacher_path", "teacher_fp32"]:
        flag = "--" + name.replace("_", "-")
        assert flag in out, flag
    assert out.count("(default:") >= len(names) + 2  # each with its help line
