"""The TIE-KD loss terms against the slow restatement of tie_kd.md (tests/reference.py)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiekd_fairseq.losses import TEACHER_TARGETS, tie_kd_loss
from reference import reference_terms

TERMS = ("kl", "top1", "topk")


def random_batch(seed, b=3, t=5, v=11, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(b, t, v, generator=g) * 3).to(dtype)
    zt = (torch.randn(b, t, v, generator=g) * 3).to(dtype)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t // 2 + 1 :] = False  # right padding, as fairseq pads targets
    mask[b - 1, 1:] = False  # a length-1 target
    return zs, zt, mask


def only(term):
    return {name: name == term for name in TERMS}


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("target", TEACHER_TARGETS)
@pytest.mark.parametrize("chunk", [None, 1, 4, 7])
def test_values_match_reference(k, target, chunk):
    zs, zt, mask = random_batch(seed=k * 10 + len(target))
    got = tie_kd_loss(zs, zt, mask, k, teacher_target=target, chunk_tokens=chunk)
    want = reference_terms(zs, zt, mask, k, target)
    for name, w in zip(TERMS, want):
        torch.testing.assert_close(getattr(got, name).double(), w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.loss.double(), sum(want), rtol=1e-5, atol=1e-7)
    assert got.top1 > 0 or k == 1  # random logits: the ranking terms are active
    assert got.topk > 0


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("target", ["full", "no_top1"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_each_term_gradient_matches_reference(k, term, target, chunk):
    zs, zt, mask = random_batch(seed=100 + k)
    zs_ref = zs.clone().requires_grad_()
    want = reference_terms(zs_ref, zt, mask, k, target)[TERMS.index(term)]
    if term == "top1" and k == 1:
        assert want == 0
        return
    (want * 0.7).backward()
    zs_got = zs.clone().requires_grad_()
    got = tie_kd_loss(zs_got, zt, mask, k, teacher_target=target, chunk_tokens=chunk, weight=0.7, **only(term))
    got.loss.backward()
    torch.testing.assert_close(got.loss.double(), want.detach() * 0.7)
    torch.testing.assert_close(zs_got.grad, zs_ref.grad, rtol=1e-6, atol=1e-9)
    assert zs_got.grad[~mask].abs().max() == 0  # padding gets no gradient
    assert zs_got.grad.abs().max() > 0


@pytest.mark.parametrize("target", TEACHER_TARGETS)
def test_all_terms_gradient_with_upstream_factor(target):
    zs, zt, mask = random_batch(seed=7, v=13)
    zs_ref = zs.clone().requires_grad_()
    (sum(reference_terms(zs_ref, zt, mask, 5, target)) * 0.5 * 3.0).backward()
    zs_got = zs.clone().requires_grad_()
    (tie_kd_loss(zs_got, zt, mask, 5, teacher_target=target, weight=0.5).loss * 3.0).backward()
    torch.testing.assert_close(zs_got.grad, zs_ref.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("target", TEACHER_TARGETS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_gradcheck_float64(target, k):
    zs, zt, mask = random_batch(seed=3, b=2, t=3, v=7)
    zs.requires_grad_()

    def f(z):
        return tie_kd_loss(z, zt, mask, k, teacher_target=target, chunk_tokens=2, weight=0.3).loss

    assert torch.autograd.gradcheck(f, (zs,), eps=1e-6, atol=1e-5)


def test_teacher_equal_to_student_gives_zero():
    zs, _, mask = random_batch(seed=11)
    out = tie_kd_loss(zs, zs.clone(), mask, 5)
    assert abs(out.kl.item()) < 1e-6
    assert out.top1.item() == 0 and out.topk.item() == 0
    assert torch.equal(out.student_argmax, out.teacher_argmax)


def test_argmax_and_teacher_gets_no_gradient():
    zs, zt, mask = random_batch(seed=12)
    zs.requires_grad_()
    zt.requires_grad_()
    out = tie_kd_loss(zs, zt, mask, 3)
    out.loss.backward()
    assert zt.grad is None
    assert torch.equal(out.student_argmax, zs.argmax(-1))
    assert torch.equal(out.teacher_argmax, zt.argmax(-1))
    assert out.student_argmax.shape == mask.shape


def test_switched_off_terms_cost_nothing_and_report_zero():
    zs, zt, mask = random_batch(seed=13)
    full = tie_kd_loss(zs, zt, mask, 5)
    for term in TERMS:
        out = tie_kd_loss(zs, zt, mask, 5, **only(term))
        torch.testing.assert_close(out.loss, getattr(full, term))
        for other in TERMS:
            if other != term:
                assert getattr(out, other) == 0


def test_no_grad_path_equals_grad_path():
    zs, zt, mask = random_batch(seed=14)
    with torch.no_grad():
        a = tie_kd_loss(zs, zt, mask, 5)
    b = tie_kd_loss(zs.clone().requires_grad_(), zt, mask, 5)
    for name in ("loss",) + TERMS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name).detach())


def test_float32_input_float32_grad():
    zs, zt, mask = random_batch(seed=15, dtype=torch.float32)
    zs.requires_grad_()
    out = tie_kd_loss(zs, zt, mask, 5)
    out.loss.backward()
    assert zs.grad.dtype == torch.float32 and out.loss.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k must be in"),
        (dict(k=12), "k must be in"),
        (dict(teacher_target="soft"), "teacher_target must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    zs, zt, mask = random_batch(seed=16)
    with pytest.raises(ValueError, match=message):
        tie_kd_loss(zs, zt, mask, **kwargs)


def test_shape_mismatch():
    zs, zt, mask = random_batch(seed=17)
    with pytest.raises(ValueError, match="differ in shape"):
        tie_kd_loss(zs, zt[..., :-1], mask)
    with pytest.raises(ValueError, match="mask shape"):
        tie_kd_loss(zs, zt, mask[:, :-1])


def test_backward_twice_with_retain_graph():
    zs, zt, mask = random_batch(seed=18)
    zs_got = zs.clone().requires_grad_()
    loss = tie_kd_loss(zs_got, zt, mask, 5, weight=0.5).loss * 3.0
    loss.backward(retain_graph=True)
    once = zs_got.grad.clone()
    loss.backward()
    torch.testing.assert_close(zs_got.grad, 2 * once)
    zs_ref = zs.clone().requires_grad_()
    (sum(reference_terms(zs_ref, zt, mask, 5)) * 0.5 * 3.0).backward()
    torch.testing.assert_close(once, zs_ref.grad, rtol=1e-6, atol=1e-9)


class HostReads(TorchDispatchMode):
    """Records reads of tensor values by the host (``.item()``, ``bool(t)``): on a GPU each
    one waits for the device to finish."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_backward_never_reads_values_on_the_host(factor):
    zs, zt, mask = random_batch(seed=19, dtype=torch.float32)
    zs.requires_grad_()
    loss = tie_kd_loss(zs, zt, mask, 5).loss * factor
    with HostReads() as reads:
        loss.backward()
    assert reads.count == 0
