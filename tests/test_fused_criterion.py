"""The tie_kd criterion's fused output layer + loss (--kd-fused-output auto, the default) and
checkpointed passes (--kd-checkpoint-passes) against the unfused path, on real fairseq models
and batches: loss, every logged value and every student parameter's gradient."""
import logging

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer
from torch.utils._python_dispatch import TorchDispatchMode

import utils
from tiekd_fairseq.errors import ConfigError
from test_criterion import first_batch, no_dropout
from test_criterion import setup as setup_criterion

TIED = ("--share-decoder-input-output-embed",)
SHARE_ALL = ("--share-all-embeddings",)
# Sizes that differ from the joined vocabulary's (56 symbols), for test_fused_never_holds_whole_logits.
TEACHER_DIMS = ("--encoder-embed-dim", "80", "--decoder-embed-dim", "80", "--encoder-ffn-embed-dim", "160",
                "--decoder-ffn-embed-dim", "160", "--encoder-attention-heads", "5", "--decoder-attention-heads", "5")
STUDENT_DIMS = ("--encoder-embed-dim", "48", "--decoder-embed-dim", "48", "--encoder-ffn-embed-dim", "96",
                "--decoder-ffn-embed-dim", "96")


@pytest.fixture(scope="module")
def joined(toy_data, tmp_path_factory):
    """Toy data with one joined dictionary (for --share-all-embeddings) and a randomly
    initialised teacher checkpoint on it."""
    root = tmp_path_factory.mktemp("joined")
    utils.preprocess(toy_data.parent / "raw", root / "bin", "--joined-dictionary")
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(root / "bin"), "--user-dir", utils.PLUGIN, "--task", "translation", "--criterion",
        "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3", *utils.TINY_ARCH, *TEACHER_DIMS])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(str(root / "teacher.pt"), {})
    return root / "bin", root / "teacher.pt"


def student_and_criteria(data, teacher, *extra, dtype=torch.float32, dropout=False):
    """A student, and criteria with the fused path off and on (same options otherwise)."""
    cfg, task, unfused = setup_criterion(data, teacher, "--kd-fused-output", "off", *extra)
    _, _, fused = setup_criterion(data, teacher, *extra)
    torch.manual_seed(0)
    student = task.build_model(cfg.model).train().to(dtype)
    if not dropout:
        no_dropout(student)
    assert unfused.fused_projections(student) is None and fused.fused_projections(student) is not None
    return student, unfused, fused, first_batch(task)


def step(criterion, student, sample, seed=0):
    """loss, logging output and parameter gradients of one forward + backward."""
    student.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _, log = criterion(student, sample)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return loss.detach(), log, grads


def assert_same(a, b, rtol=1e-5, atol=1e-5, grad_rtol=1e-5):
    """Equal to rounding: values elementwise; each gradient tensor relative to its largest
    entry, except the attention key biases, whose exact gradient is 0 (softmax ignores a
    shift), so that theirs is rounding noise of the size of the other gradients'."""
    (loss_a, log_a, grads_a), (loss_b, log_b, grads_b) = a, b
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=atol)
    assert set(log_a) == set(log_b)
    for key in log_a:
        torch.testing.assert_close(torch.as_tensor(log_b[key]).double(), torch.as_tensor(log_a[key]).double(),
                                   rtol=rtol, atol=atol, msg=key)
    assert grads_a.keys() == grads_b.keys() and grads_a
    largest = max(g.double().abs().max() for g in grads_a.values())
    for name, g in grads_a.items():
        diff = (grads_b[name].double() - g.double()).abs().max()
        scale = largest if name.endswith("k_proj.bias") else g.double().abs().max()
        assert grads_b[name].dtype == g.dtype and diff <= grad_rtol * scale + atol, \
            (name, diff.item(), scale.item())


@pytest.mark.parametrize("embeddings", [(), TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("smoothing", ["0", "0.1"])
def test_fused_equals_unfused(toy_data, teacher_checkpoint, embeddings, iters, smoothing):
    student, unfused, fused, sample = student_and_criteria(
        toy_data, teacher_checkpoint, *embeddings, "--kd-iters", str(iters), "--label-smoothing", smoothing)
    assert (sample["target"] == unfused.padding_idx).any()  # padded batch
    assert_same(step(unfused, student, sample), step(fused, student, sample))


@pytest.mark.parametrize("switches", [("--kd-no-kl",), ("--kd-no-top1", "--kd-no-topk"),
                                      ("--kd-teacher-target", "no_top1", "--kd-topk", "3")])
def test_fused_equals_unfused_ablations(toy_data, teacher_checkpoint, switches):
    student, unfused, fused, sample = student_and_criteria(toy_data, teacher_checkpoint, *TIED, *switches,
                                                           "--kd-iters", "2")
    assert_same(step(unfused, student, sample), step(fused, student, sample))


def test_fused_equals_unfused_two_teachers(toy_data, teacher_checkpoint, second_teacher_checkpoint):
    """An ensemble of two different teachers: each teacher's features meet its own projection."""
    student, unfused, fused, sample = student_and_criteria(
        toy_data, f"{teacher_checkpoint}:{second_teacher_checkpoint}", *TIED, "--kd-iters", "2")
    assert_same(step(unfused, student, sample), step(fused, student, sample))


def test_fused_equals_unfused_share_all_embeddings(joined):
    data, teacher = joined
    student, unfused, fused, sample = student_and_criteria(data, teacher, *SHARE_ALL)
    assert student.encoder.embed_tokens.weight is student.decoder.output_projection.weight
    assert_same(step(unfused, student, sample), step(fused, student, sample))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_equals_unfused_half_precision(toy_data, teacher_checkpoint, dtype):
    """A half-precision student (and teacher, placed in the student's dtype), as --fp16/--bf16
    run them. The gradients differ by the unfused path's rounding of dL/dz to half."""
    student, unfused, fused, sample = student_and_criteria(toy_data, teacher_checkpoint, *TIED, dtype=dtype)
    a, b = step(unfused, student, sample), step(fused, student, sample)
    assert all(g.dtype == dtype for g in b[2].values())
    assert_same(a, b, rtol=1e-4, atol=1e-4, grad_rtol=8 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("teacher_fp32", [(), ("--teacher-fp32",)], ids=["teacher_autocast", "teacher_fp32"])
def test_fused_equals_unfused_under_autocast(toy_data, teacher_checkpoint, teacher_fp32):
    """fairseq's --amp runs the step under autocast; --teacher-fp32 keeps the teacher out of it."""
    student, unfused, fused, sample = student_and_criteria(toy_data, teacher_checkpoint, *TIED, *teacher_fp32)
    results = []
    for criterion in (unfused, fused):
        student.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, log = criterion(student, sample)
        loss.backward()
        results.append((loss.detach(), log, {n: p.grad.clone() for n, p in student.named_parameters()}))
    assert_same(*results, rtol=1e-4, atol=1e-4, grad_rtol=8 * torch.finfo(torch.bfloat16).eps)


def test_validation_is_the_same(toy_data, teacher_checkpoint):
    student, unfused, fused, sample = student_and_criteria(toy_data, teacher_checkpoint)
    student.eval()
    with torch.no_grad():
        (loss_a, _, log_a), (loss_b, _, log_b) = unfused(student, sample), fused(student, sample)
    torch.testing.assert_close(loss_b, loss_a)
    torch.testing.assert_close(loss_b, log_b["ce_loss"])
    for key in log_a:
        torch.testing.assert_close(torch.as_tensor(log_b[key]).double(), torch.as_tensor(log_a[key]).double(),
                                   rtol=1e-5, atol=1e-6)


class LargestLogits(TorchDispatchMode):
    """The most rows of any tensor (views aside) whose last dimension is the vocabulary."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view (e.g. a projection weight expanded for a batched matmul)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.size(-1) == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


def test_fused_never_holds_whole_logits(joined):
    # (the joined vocabulary's size is no other dimension of the model's tensors)
    student, unfused, fused, sample = student_and_criteria(*joined, *STUDENT_DIMS, "--kd-chunk-tokens", "16",
                                                           "--kd-iters", "2")
    assert len(fused.task.target_dictionary) == 56
    vocab, positions = len(fused.task.target_dictionary), sample["target"].numel()
    for criterion, most in ((unfused, positions), (fused, 16)):
        with LargestLogits(vocab) as seen:
            loss, _, _ = criterion(student, sample)
            loss.backward()
        assert seen.rows == most


def fused_log_lines(caplog):
    return [r.getMessage() for r in caplog.records if "--kd-fused-output" in r.getMessage()]


def test_adaptive_softmax_student_is_refused_before_the_first_step(toy_data, teacher_checkpoint):
    cfg, task, criterion = setup_criterion(toy_data, teacher_checkpoint, "--adaptive-softmax-cutoff", "10")
    student = task.build_model(cfg.model)
    with pytest.raises(ConfigError, match="an adaptive-softmax student has none: drop --adaptive-softmax-cutoff"):
        criterion(student, first_batch(task))


def test_overridden_output_layer_falls_back_with_one_log_line(toy_data, teacher_checkpoint, caplog):
    cfg, task, criterion = setup_criterion(toy_data, teacher_checkpoint)
    student = no_dropout(task.build_model(cfg.model)).train()

    class ScaledOutputDecoder(type(student.decoder)):
        def output_layer(self, features):
            return super().output_layer(features) * 2.0

    student.decoder.__class__ = ScaledOutputDecoder
    sample = first_batch(task)
    with caplog.at_level(logging.INFO, logger="tiekd_fairseq.criterion"):
        _, _, log = criterion(student, sample)
        criterion(student, sample)
    assert fused_log_lines(caplog) == ["--kd-fused-output auto: unfused output layer and loss, because student: "
                                       "ScaledOutputDecoder overrides output_layer"]
    # the unfused path saw the overridden layer
    with torch.no_grad():
        logits = student(**sample["net_input"])[0]
    lprobs = logits.log_softmax(-1).view(-1, logits.size(-1))
    mask = sample["target"].view(-1).ne(criterion.padding_idx)
    nll = -lprobs.gather(1, sample["target"].view(-1, 1)).view(-1)[mask].sum()
    torch.testing.assert_close(log["nll_loss"], nll)


def saved_bytes(criterion, student, sample):
    """Bytes that autograd saves for backward during one forward (outside checkpointed parts)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = criterion(student, sample)
    return total


@pytest.mark.parametrize("fused", ["auto", "off"])
def test_checkpointed_passes_same_results_less_saved(toy_data, teacher_checkpoint, fused):
    """With dropout on: the recomputation replays the same dropout masks."""
    extra = ("--kd-iters", "3", "--kd-fused-output", fused)
    cfg, task, plain = setup_criterion(toy_data, teacher_checkpoint, *extra)
    _, _, checkpointed = setup_criterion(toy_data, teacher_checkpoint, *extra, "--kd-checkpoint-passes")
    _, _, one_pass = setup_criterion(toy_data, teacher_checkpoint, "--kd-iters", "1", "--kd-fused-output", fused)
    torch.manual_seed(0)
    student = task.build_model(cfg.model).train()
    assert student.decoder.dropout_module.p > 0
    sample = first_batch(task)
    assert_same(step(plain, student, sample), step(checkpointed, student, sample), rtol=1e-6, atol=1e-6,
                grad_rtol=1e-6)
    held = {name: saved_bytes(c, student, sample) for name, c in
            (("plain", plain), ("checkpointed", checkpointed), ("one_pass", one_pass))}
    # passes 2 and 3 keep (almost) nothing of their decoder graphs
    assert held["checkpointed"] < held["one_pass"] + 0.1 * (held["plain"] - held["one_pass"]), held
