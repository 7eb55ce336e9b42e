"""The tie_kd criterion on real fairseq models and batches (in-process)."""
import copy

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import utils
from tiekd_fairseq.losses import next_decoder_input


def setup(data, teacher, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", utils.PLUGIN, "--task", "translation_tie_kd",
        "--teacher-path", str(teacher), "--criterion", "tie_kd", *utils.TINY_ARCH, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    return cfg, task, task.build_criterion(cfg.criterion)


def first_batch(task):
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=400).next_epoch_itr(shuffle=False)
    return next(iter(itr))


def no_dropout(model):
    for m in model.modules():
        if hasattr(m, "p") and isinstance(m.p, float):
            m.p = 0.0
    return model


@pytest.fixture(scope="module")
def env(toy_data, teacher_checkpoint):
    cfg, task, criterion = setup(toy_data, teacher_checkpoint)
    return cfg, task, criterion, first_batch(task)


def student_like_teacher(task):
    student = no_dropout(copy.deepcopy(task.teacher.models[0]))
    student.requires_grad_(True)
    return student.train()


def test_teacher_equal_to_student(env):
    _, task, criterion, sample = env
    _, _, log = criterion(student_like_teacher(task), sample)
    assert abs(log["kd_kl"].item()) < 1e-4 * log["ntokens"]
    assert log["kd_top1"].item() == 0 and log["kd_topk"].item() == 0
    assert log["teacher_top1_agree"].item() == log["ntokens"]


def test_objective_and_sample_untouched(env, toy_data):
    cfg, task, criterion, sample = env
    student = task.build_model(cfg.model).train()
    before = copy.deepcopy(sample)
    loss, sample_size, log = criterion(student, sample)
    for key in ("src_tokens", "src_lengths", "prev_output_tokens"):
        assert torch.equal(sample["net_input"][key], before["net_input"][key]), key
    assert torch.equal(sample["target"], before["target"])
    kd = log["kd_kl"] + log["kd_top1"] + log["kd_topk"]
    torch.testing.assert_close(loss.detach(), 0.5 * log["ce_loss"] + 0.5 * kd)
    torch.testing.assert_close(log["kd_loss"], kd)
    assert sample_size == sample["ntokens"]
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.models[0].parameters())
    student.eval()  # validation: loss is the label-smoothed CE alone
    loss, _, log = criterion(student, sample)
    torch.testing.assert_close(loss, log["ce_loss"])


@pytest.mark.parametrize("rate", [0.3, 1.0])
def test_kd_rate_weights_ce_and_kd(toy_data, teacher_checkpoint, rate):
    """(1-a)·CE + a·KD with a != 0.5 (at 0.5 the weights could be swapped unseen); a = 1 leaves
    no CE: the gradient is the KD term's alone."""
    cfg, task, criterion = setup(toy_data, teacher_checkpoint, "--kd-rate", str(rate))
    sample = first_batch(task)
    student = no_dropout(task.build_model(cfg.model)).train()
    loss, _, log = criterion(student, sample)
    kd = log["kd_kl"] + log["kd_top1"] + log["kd_topk"]
    assert log["ce_loss"] > 0 and kd > 0
    torch.testing.assert_close(loss.detach(), (1 - rate) * log["ce_loss"] + rate * kd)
    if rate == 1.0:  # no CE in the gradient: with KL alone, a student equal to the teacher gets none
        _, task_kl, kl_only = setup(toy_data, teacher_checkpoint, "--kd-rate", "1", "--kd-no-top1", "--kd-no-topk")
        twin = student_like_teacher(task_kl)
        kl_only(twin, first_batch(task_kl))[0].backward()
        assert max(p.grad.abs().max() for p in twin.parameters() if p.grad is not None) < 1e-5


def test_two_teachers_are_averaged_in_probability(toy_data, teacher_checkpoint, second_teacher_checkpoint):
    """--teacher-path A:B: the KL is against log((p_A + p_B) / 2), computed here from each
    teacher's own forward; it differs from the KL against either teacher alone."""
    kl_only = ("--kd-iters", "1", "--kd-no-top1", "--kd-no-topk")
    kd_kl = {}
    for name, path in (("a", teacher_checkpoint), ("b", second_teacher_checkpoint),
                       ("ab", f"{teacher_checkpoint}:{second_teacher_checkpoint}")):
        cfg, task, criterion = setup(toy_data, path, *kl_only)
        sample = first_batch(task)
        torch.manual_seed(0)
        student = no_dropout(task.build_model(cfg.model)).train()
        kd_kl[name] = criterion(student, sample)[2]["kd_kl"].double()
    assert len(task.teacher.models) == 2
    net = sample["net_input"]
    with torch.no_grad():
        lp_t = torch.stack([torch.log_softmax(m(**net)[0].double(), -1) for m in task.teacher.models])
        lp_t = torch.logsumexp(lp_t, 0) - torch.log(torch.tensor(2.0, dtype=torch.float64))
        lp_s = torch.log_softmax(student(**net)[0].double(), -1)
    mask = sample["target"] != task.target_dictionary.pad()
    expected = (lp_t.exp() * (lp_t - lp_s)).sum(-1)[mask].sum()
    torch.testing.assert_close(kd_kl["ab"], expected, rtol=1e-5, atol=1e-4)
    assert abs(kd_kl["a"] - kd_kl["ab"]) > 1e-2 * expected and abs(kd_kl["b"] - kd_kl["ab"]) > 1e-2 * expected


@pytest.mark.parametrize("sentence_avg", [False, True])
def test_logged_metrics_and_their_units(toy_data, teacher_checkpoint, sentence_avg):
    """fairseq's log: loss, ce, kd_loss per sample-size unit (target tokens, or sentences with
    --sentence-avg) in bits; nll_loss and kd_kl per token in bits; the ranking margins and the
    agreement per token; summed over workers' logging outputs before dividing."""
    import math

    from fairseq import metrics

    cfg, task, criterion = setup(toy_data, teacher_checkpoint, *(["--sentence-avg"] if sentence_avg else []))
    sample = first_batch(task)
    student = no_dropout(task.build_model(cfg.model)).train()
    logs = []
    for seed in (0, 1):  # two "workers"
        torch.manual_seed(seed)
        loss, sample_size, log = criterion(student, sample)
        assert sample_size == (sample["nsentences"] if sentence_avg else sample["ntokens"]) == log["sample_size"]
        assert log["loss"] == loss.detach()
        logs.append(log)
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics(logs)
    got = agg.get_smoothed_values()
    total = {k: sum(float(log[k]) for log in logs) for k in logs[0]}
    n, size, ln2 = total["ntokens"], total["sample_size"], math.log(2)
    expected = {"loss": total["loss"] / size / ln2, "ce": total["ce_loss"] / size / ln2,
                "kd_loss": total["kd_loss"] / size / ln2, "nll_loss": total["nll_loss"] / n / ln2,
                "kd_kl": total["kd_kl"] / n / ln2, "kd_top1": total["kd_top1"] / n, "kd_topk": total["kd_topk"] / n,
                "teacher_top1_agree": total["teacher_top1_agree"] / n}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-3), key
    assert got["ppl"] == pytest.approx(2 ** got["nll_loss"], rel=1e-3)


@pytest.mark.parametrize("switch, removed", [("--kd-no-kl", "kd_kl"), ("--kd-no-top1", "kd_top1"),
                                             ("--kd-no-topk", "kd_topk")])
def test_ablation_switch_removes_exactly_its_term(env, toy_data, teacher_checkpoint, switch, removed):
    cfg, task, full, sample = env
    _, task2, ablated = setup(toy_data, teacher_checkpoint, switch)
    student = task.build_model(cfg.model).eval()
    student.train = lambda mode=True: student  # keep eval (no dropout) but optimise the objective
    torch.manual_seed(0)
    _, _, log_full = full(student, sample)
    _, _, log_ab = ablated(student, sample)
    for term in ("kd_kl", "kd_top1", "kd_topk"):
        if term == removed:
            assert log_ab[term] == 0 and log_full[term] > 0
        else:
            torch.testing.assert_close(log_ab[term], log_full[term])
    torch.testing.assert_close(log_ab["kd_loss"], log_full["kd_loss"] - log_full[removed])


@pytest.mark.parametrize("iters", [1, 2, 4])
def test_iterative_passes_feed_previous_student_argmax(toy_data, teacher_checkpoint, iters):
    cfg, task, criterion = setup(toy_data, teacher_checkpoint, "--kd-iters", str(iters))
    sample = first_batch(task)
    student = no_dropout(task.build_model(cfg.model)).train()
    seen = []  # (decoder input, logits) of every student decoder call
    vocab = len(task.target_dictionary)

    def logits(out):  # the fused loss (default) has the decoder return features
        return out if out.size(-1) == vocab else student.decoder.output_layer(out)

    student.decoder.register_forward_hook(lambda m, inp, out: seen.append((inp[0], logits(out[0]).detach())))
    teacher_inputs = []
    task.teacher.models[0].decoder.register_forward_hook(lambda m, inp, out: teacher_inputs.append(inp[0]))
    encoder_calls = []
    student.encoder.register_forward_hook(lambda *a: encoder_calls.append(1))
    criterion(student, sample)
    assert len(seen) == iters and len(teacher_inputs) == iters and len(encoder_calls) == 1
    gold = sample["net_input"]["prev_output_tokens"]
    assert torch.equal(seen[0][0], gold)
    for i in range(1, iters):
        want = next_decoder_input(gold, seen[i - 1][1].argmax(-1), task.target_dictionary.pad(),
                                  task.target_dictionary.unk())
        assert torch.equal(seen[i][0], want) and torch.equal(teacher_inputs[i], want)
        assert not torch.equal(want, gold)  # an untrained student does not reproduce the gold


def test_next_decoder_input_keeps_start_and_padding():
    pad, bos = 1, 2
    gold = torch.tensor([[bos, 5, 6, 7], [bos, 8, pad, pad], [pad, pad, bos, 9]])  # right and left padded
    pred = torch.tensor([[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21]])
    got = next_decoder_input(gold, pred, pad, unk=3)
    assert got.tolist() == [[bos, 10, 11, 12], [bos, 14, pad, pad], [pad, pad, bos, 20]]
    assert gold[0, 1] == 5  # input not modified


def test_next_decoder_input_feeds_a_predicted_pad_as_unk():
    pad, bos, unk = 1, 2, 3
    gold = torch.tensor([[bos, 5, 6, 7], [pad, bos, 8, 9]])
    pred = torch.tensor([[pad, 11, pad, pad], [18, pad, bos, 21]])  # the last column is never fed
    got = next_decoder_input(gold, pred, pad, unk)
    assert got.tolist() == [[bos, unk, 11, unk], [pad, bos, unk, bos]]
    assert pred[0, 0] == pad  # input not modified
