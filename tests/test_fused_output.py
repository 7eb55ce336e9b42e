"""The fused output projection + loss (tiekd_fairseq.fused_output) against the unfused path:
logits h W^T made whole, then losses.tie_kd_loss and fairseq's label-smoothed CE."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

from tiekd_fairseq.fused_output import fused_tie_kd_loss
from tiekd_fairseq.losses import TEACHER_TARGETS, tie_kd_loss
from test_losses import HostReads
from test_numerics import flushed_share

PAD = 1


def batch(seed, b=3, t=5, dim=8, v=23, teachers=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(b, t, dim, generator=g) * 2
    w_s = torch.randn(v, dim, generator=g)
    h_t = [torch.randn(b, t, 2 * dim, generator=g) * 2 for _ in range(teachers)]
    w_t = [torch.randn(v, 2 * dim, generator=g) for _ in range(teachers)]
    gold = torch.randint(2, v, (b, t), generator=g)
    gold[0, t // 2 + 1:] = PAD  # right padding, as fairseq pads targets
    gold[b - 1, 1:] = PAD  # a length-1 target
    cast = lambda x: x.to(dtype)
    return cast(h_s), cast(w_s), list(map(cast, h_t)), list(map(cast, w_t)), gold


def unfused(h_s, w_s, h_t, w_t, gold, eps, ce_weight, **kd):
    """The unfused criterion's maths: whole logits, tie_kd_loss, fairseq's CE on log_softmax."""
    zs = F.linear(h_s, w_s)
    outs = [F.linear(h, w) for h, w in zip(h_t, w_t)]  # as TeacherEnsemble.logits
    zt = outs[0] if len(outs) == 1 else torch.stack([o.float().log_softmax(-1) for o in outs]).logsumexp(0) - \
        torch.log(torch.tensor(float(len(outs))))
    mask = gold.ne(PAD)
    terms = tie_kd_loss(zs, zt, mask, **kd)
    lprobs = F.log_softmax(zs, -1, dtype=torch.promote_types(zs.dtype, torch.float32))
    ce, nll = label_smoothed_nll_loss(lprobs.view(-1, zs.size(-1)), gold.view(-1), eps, ignore_index=PAD)
    return terms, ce, nll, terms.loss + ce_weight * ce


def both(seed, eps=0.1, ce_weight=0.5, teachers=1, dtype=torch.float64, factor=2.5, **kd):
    """Loss terms and gradients (w.r.t. h_S and a tied W_S also used as an embedding) of both."""
    results = []
    for fused in (False, True):
        h_s, w_s, h_t, w_t, gold = batch(seed, teachers=teachers, dtype=dtype)
        h_s.requires_grad_()
        w_s.requires_grad_()
        if fused:
            out = fused_tie_kd_loss(h_s, w_s, h_t, w_t, gold.ne(PAD), ce_target=gold, label_smoothing=eps,
                                    ce_weight=ce_weight, **kd)
            values = (out.kl, out.top1, out.topk, out.ce, out.nll, out.loss)
            argmax = (out.student_argmax, out.teacher_argmax)
        else:
            terms, ce, nll, loss = unfused(h_s, w_s, h_t, w_t, gold, eps, ce_weight, **kd)
            values = (terms.kl, terms.top1, terms.topk, ce, nll, loss)
            argmax = (terms.student_argmax, terms.teacher_argmax)
        lookup = w_s[gold].sum() * 0.1  # a tied embedding's lookup
        ((values[-1] + lookup) * factor).backward()
        results.append((values, argmax, h_s.grad, w_s.grad))
    return results


KD_SWITCHES = [dict(), dict(kl=False), dict(top1=False), dict(topk=False), dict(top1=False, topk=False)]


@pytest.mark.parametrize("switches", KD_SWITCHES)
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("teachers", [1, 2])
def test_fused_equals_unfused(switches, eps, teachers):
    (v0, a0, gh0, gw0), (v1, a1, gh1, gw1) = both(seed=len(switches) + teachers, eps=eps, teachers=teachers,
                                                  k=3, weight=0.4, chunk_tokens=4, **switches)
    for name, x, y in zip(("kl", "top1", "topk", "ce", "nll", "loss"), v0, v1):
        torch.testing.assert_close(y.double(), x.double(), rtol=1e-9, atol=1e-12, msg=name)
    assert all(torch.equal(x, y) for x, y in zip(a0, a1))
    torch.testing.assert_close(gh1, gh0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gw1, gw0, rtol=1e-9, atol=1e-12)
    assert gh1[0, 3:].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("target", TEACHER_TARGETS)
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_fused_equals_unfused_teacher_targets_and_chunks(target, chunk):
    (v0, a0, gh0, gw0), (v1, a1, gh1, gw1) = both(seed=3, teacher_target=target, chunk_tokens=chunk, k=5)
    for x, y in zip(v0, v1):
        torch.testing.assert_close(y.double(), x.double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gh1, gh0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gw1, gw0, rtol=1e-9, atol=1e-12)


def test_float32_equals_unfused_to_float32_rounding():
    (v0, _, gh0, gw0), (v1, _, gh1, gw1) = both(seed=5, dtype=torch.float32)
    for x, y in zip(v0, v1):
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh1, gh0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw1, gw0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_upcast_per_chunk(dtype):
    """Half features and weights: the same values as the unfused path (both upcast the half
    logits chunk by chunk); the gradients differ by the unfused path's rounding of dL/dz to
    half before its half matmuls (the fused one multiplies in float32, then rounds)."""
    (v0, _, gh0, gw0), (v1, _, gh1, gw1) = both(seed=6, dtype=dtype)
    for x, y in zip(v0, v1):
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
    for fused, plain in ((gh1, gh0), (gw1, gw0)):
        assert fused.dtype == dtype
        assert (fused.double() - plain.double()).norm() <= 2 * torch.finfo(dtype).eps * plain.double().norm()


@pytest.mark.parametrize("scale", [128.0, 2.0**15])
def test_fp16_gradients_scaled_before_rounding(scale):
    """The buffers behind the fused gradients stay float32 until the loss scale is applied:
    no more entries flush to 0 than "scale, then round" of the float64 gradient (stored in
    half precision they lost 38% of W's and 19% of h's)."""
    g = torch.Generator().manual_seed(0)
    v, dim, rows = 8000, 16, 32
    h_s = torch.randn(rows, dim, generator=g)
    h_s[:, 0] = 4.0
    w_s, w_t = torch.randn(2, v, dim, generator=g) * 0.5
    w_s[:, 0] = w_t[:, 0] = 0
    w_s[0, 0], w_t[0, 0] = 5.0, 6.0  # peaked: token 0 some 20 logits above the rest
    h_s, w_s, w_t = h_s.half(), w_s.half(), w_t.half()
    mask = torch.ones(rows, dtype=torch.bool)
    h64, w64 = h_s.double().requires_grad_(), w_s.double().requires_grad_()
    loss64 = fused_tie_kd_loss(h64, w64, [h_s.double()], [w_t.double()], mask, weight=0.5 / 3).loss
    ref = torch.autograd.grad(loss64 * scale, (h64, w64))
    h, w = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    (fused_tie_kd_loss(h, w, [h_s], [w_t], mask, weight=0.5 / 3).loss * scale).backward()
    for got, want in zip((h.grad, w.grad), ref):
        assert got.dtype == torch.float16
        assert flushed_share(got, want) <= flushed_share(want.half(), want) + 1e-3
        assert (got.double() - want).norm() <= 5e-3 * want.norm()  # the half logits round


def test_no_grad_path_equals_grad_path():
    h_s, w_s, h_t, w_t, gold = batch(7)
    kwargs = dict(ce_target=gold, label_smoothing=0.1, ce_weight=0.5)
    with torch.no_grad():
        a = fused_tie_kd_loss(h_s, w_s, h_t, w_t, gold.ne(PAD), **kwargs)
    b = fused_tie_kd_loss(h_s.requires_grad_(), w_s, h_t, w_t, gold.ne(PAD), **kwargs)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y.detach())


def test_backward_twice_and_never_reads_values_on_the_host():
    h_s, w_s, h_t, w_t, gold = batch(8, dtype=torch.float32)
    h_s.requires_grad_()
    w_s.requires_grad_()
    loss = fused_tie_kd_loss(h_s, w_s, h_t, w_t, gold.ne(PAD), ce_target=gold, ce_weight=0.5).loss * 3.0
    with HostReads() as reads:
        loss.backward(retain_graph=True)
    assert reads.count == 0
    once = h_s.grad.clone(), w_s.grad.clone()
    loss.backward()
    torch.testing.assert_close(h_s.grad, 2 * once[0])
    torch.testing.assert_close(w_s.grad, 2 * once[1])


def test_gradcheck_float64():
    h_s, w_s, h_t, w_t, gold = batch(9, b=2, t=3, dim=4, v=7)

    def f(h, w):
        return fused_tie_kd_loss(h, w, h_t, w_t, gold.ne(PAD), 3, chunk_tokens=2, weight=0.3, ce_target=gold,
                                 label_smoothing=0.1, ce_weight=0.7).loss

    assert torch.autograd.gradcheck(f, (h_s.requires_grad_(), w_s.requires_grad_()), eps=1e-6, atol=1e-5)


def test_bad_arguments():
    h_s, w_s, h_t, w_t, gold = batch(10)
    mask = gold.ne(PAD)
    with pytest.raises(ValueError, match="do not fit its projection"):
        fused_tie_kd_loss(h_s[..., :-1], w_s, h_t, w_t, mask)
    with pytest.raises(ValueError, match="do not fit the student"):
        fused_tie_kd_loss(h_s, w_s, h_t, [w_t[0][:-1]], mask)
    with pytest.raises(ValueError, match="need teacher features"):
        fused_tie_kd_loss(h_s, w_s, [], [], mask)
