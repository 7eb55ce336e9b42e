"""The output projection fused with the TIE-KD terms and the label-smoothed CE (plain PyTorch).

For decoders whose output layer is a bias-free linear projection, ``z = h W^T``. Given the
decoder features ``h`` (``... x C``) and projection weights ``W`` (``V x C``) of the student and
of the teacher(s), ``fused_tie_kd_loss`` computes what ``losses.tie_kd_loss`` computes on the
logits (and, for the gold pass, fairseq's label-smoothed CE and NLL) without ever holding a
``... x V`` tensor of either model: each chunk of positions gets its logits, its terms and
their gradient w.r.t. ``z_S``, which is folded at once into the gradients w.r.t. ``h_S``
(``chunk x C``) and ``W_S`` (``V x C``) and dropped. Backward only scales those two buffers.

The chunk loop and the term maths are ``losses._terms``, shared with the unfused loss; only
where the logits come from and where their gradient goes differ.
"""

import contextlib
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import (
    NLL,
    LabelSmoothedCE,
    _terms,
    check_options,
    chunk_rows,
    compute_dtype,
    ensemble_scores,
    kd_total,
    label_smoothed_ce,
    scaled_gradient,
)


class FusedTerms(NamedTuple):
    loss: Tensor  # weight * (enabled KD terms) + ce_weight * CE; carries the gradient
    kl: Tensor  # detached sums over included positions, for logging
    top1: Tensor
    topk: Tensor
    ce: Tensor  # label-smoothed CE (0 without ce_target)
    nll: Tensor  # its NLL part, as fairseq logs it
    student_argmax: Tensor  # (...,) long
    teacher_argmax: Tensor  # (...,) long


def no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def teacher_chunk_logits(features: Sequence[Tensor], weights: Sequence[Tensor], start: int, end: int,
                         fp32: bool = False) -> Tensor:
    """Teacher scores of rows start:end; an ensemble gives the log of its members' mean
    probability, as ``TeacherEnsemble.logits`` does on whole tensors. ``fp32``: outside any
    autocast (fairseq's --amp), as a --teacher-fp32 teacher's decoder runs."""
    with no_autocast(features[0].device) if fp32 else contextlib.nullcontext():
        outs = [F.linear(h[start:end], w) for h, w in zip(features, weights)]
    return ensemble_scores(outs)


def _chunk_logits(h_s, w_s, teacher_features, teacher_weights, teacher_fp32, dtype):
    def logits(start, end):
        # the projections run in the models' dtype (and any autocast), as their output layers
        # would; the terms then work on the chunk upcast
        zs = F.linear(h_s[start:end], w_s).to(dtype)
        zt = None
        if teacher_features:
            zt = teacher_chunk_logits(teacher_features, teacher_weights, start, end, teacher_fp32).to(dtype)
        return zs, zt

    return logits


def _total(sums, enabled, weight, ce: Optional[LabelSmoothedCE], vocab, dtype):
    total = kd_total(sums, enabled, weight)
    if ce is not None:
        total = total + ce.weight * label_smoothed_ce(sums, ce.epsilon, vocab)
    return total.to(dtype)


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, teacher, mask, options, ce, weight):
        teacher_features, teacher_weights, teacher_fp32 = teacher
        k, use_kl, use_top1, use_topk, target, chunk = options
        dtype = compute_dtype(h_s.dtype)
        # Gradients stay in float32 for half inputs until backward has applied the upstream
        # factor (the loss scale): rounded first, small entries would flush to 0.
        grad_h = torch.zeros(h_s.shape, dtype=dtype, device=h_s.device) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(w_s.shape, dtype=dtype, device=w_s.device) if ctx.needs_input_grad[1] else None
        w_c = w_s.to(dtype)

        def sink(start, end, grad):
            with no_autocast(grad.device):  # the gradients are defined in float32 (or float64)
                if grad_h is not None:
                    torch.mm(grad, w_c, out=grad_h[start:end])
                if grad_w is not None:
                    grad_w.addmm_(grad.t(), h_s[start:end].to(dtype))

        sums, s_arg, t_arg = _terms(
            h_s.size(0), _chunk_logits(h_s, w_s, teacher_features, teacher_weights, teacher_fp32, dtype), mask,
            k, use_kl, use_top1, use_topk, target, chunk, sink, weight, ce,
        )
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h_s.dtype, w_s.dtype)
        loss = _total(sums, (use_kl, use_top1, use_topk), weight, ce, w_s.size(0), dtype)
        ctx.mark_non_differentiable(sums, s_arg, t_arg)
        return loss, sums, s_arg, t_arg

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grads = [None if g is None else scaled_gradient(g, grad_loss, dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None)


def fused_tie_kd_loss(
    student_features: Tensor,
    student_weight: Tensor,
    teacher_features: Sequence[Tensor],
    teacher_weights: Sequence[Tensor],
    mask: Tensor,
    k: int = 5,
    *,
    kl: bool = True,
    top1: bool = True,
    topk: bool = True,
    teacher_target: str = "full",
    chunk_tokens: Optional[int] = None,
    weight: float = 1.0,
    ce_target: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
    ce_weight: float = 0.0,
    teacher_fp32: bool = False,
) -> FusedTerms:
    """TIE-KD terms (and optionally the label-smoothed CE) of one pass, from features.

    Args:
        student_features: ``(..., C)`` the student decoder's features (before its output layer).
        student_weight: ``(V, C)`` its output projection (logits = features @ weight.T);
            receives the projection's gradient (a tied embedding adds its lookup's).
        teacher_features, teacher_weights: the same for each teacher (no gradient); several
            form an ensemble (log of the mean probability). May be empty when no KD term is
            enabled.
        mask: ``(...)`` bool, True at positions that count (non-pad targets).
        k, kl, top1, topk, teacher_target, chunk_tokens, weight: as in ``tie_kd_loss``.
        ce_target: ``(...)`` gold ids: also compute fairseq's label-smoothed CE (with
            ``label_smoothing``) and NLL over the masked positions, entering ``loss`` with
            factor ``ce_weight``.
        teacher_fp32: project the teacher features outside any autocast (--teacher-fp32).
    """
    vocab, dim = student_weight.shape
    lead = student_features.shape[:-1]
    if student_features.size(-1) != dim:
        raise ValueError(f"student features {tuple(student_features.shape)} do not fit its projection "
                         f"{tuple(student_weight.shape)}")
    if len(teacher_features) != len(teacher_weights):
        raise ValueError("one projection weight per teacher is needed")
    for h, w in zip(teacher_features, teacher_weights):
        if h.shape[:-1] != lead or w.size(0) != vocab or h.size(-1) != w.size(1):
            raise ValueError(f"teacher features {tuple(h.shape)} / projection {tuple(w.shape)} do not fit "
                             f"the student's {tuple(student_features.shape)} / {tuple(student_weight.shape)}")
    if mask.shape != lead:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be {tuple(lead)}")
    if (kl or top1 or topk) and not teacher_features:
        raise ValueError("the KD terms need teacher features")
    check_options(k, vocab, teacher_target)
    h_s = student_features.reshape(-1, dim)
    teacher = ([h.detach().reshape(-1, h.size(-1)) for h in teacher_features], [w.detach() for w in teacher_weights],
               teacher_fp32)
    m = mask.reshape(-1)
    ce = None if ce_target is None else LabelSmoothedCE(ce_target.reshape(-1), label_smoothing, ce_weight)
    options = (k, kl, top1, topk, teacher_target, chunk_rows(h_s.size(0), vocab, chunk_tokens))
    dtype = compute_dtype(h_s.dtype)
    if torch.is_grad_enabled() and (h_s.requires_grad or student_weight.requires_grad):
        loss, sums, s_arg, t_arg = _FusedFunction.apply(h_s, student_weight, teacher, m, options, ce, weight)
    else:
        sums, s_arg, t_arg = _terms(h_s.size(0), _chunk_logits(h_s, student_weight, *teacher, dtype), m,
                                    *options, None, weight, ce)
        loss = _total(sums, (kl, top1, topk), weight, ce, vocab, dtype)
    ce_sum = label_smoothed_ce(sums, label_smoothing, vocab) if ce is not None else sums.new_zeros(())
    # reported in at least float32: a half-precision sum over a batch can overflow
    sums, ce_sum = sums.to(loss.dtype), ce_sum.to(loss.dtype)
    return FusedTerms(
        loss=loss, kl=sums[0], top1=sums[1], topk=sums[2], ce=ce_sum, nll=sums[NLL],
        student_argmax=s_arg.view(lead), teacher_argmax=t_arg.view(lead),
    )
