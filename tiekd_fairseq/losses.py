"""TIE-KD loss terms in plain PyTorch (no fairseq import).

For every included target position (``mask`` True), with ``p_S = softmax(z_S)``,
``p_T = softmax(z_T)``, ``T_k`` / ``S_k`` the teacher's / student's k most probable ids
(``T_k[0]`` the teacher's top-1):

- ``kl    = KL(q || p_S)`` where ``q`` is ``p_T`` (``teacher_target="full"``) or one of the
  paper's analysis variants of it (see ``TEACHER_TARGETS``);
- ``top1  = sum_{j=1..k-1} max(0, p_S(T_k[j]) - p_S(T_k[0]))``;
- ``topk  = sum_{a in T_k} sum_{b in S_k} [p_T(a) > p_T(b)] * max(0, p_S(b) - p_S(a))``.

Why a custom autograd function: the naive formulation keeps several ``B x T x V`` tensors
(probabilities, log-probabilities, products) alive until backward, per pass. Here the
forward walks the positions in chunks, computes every term and the exact gradient of the
weighted total with respect to the student logits into one buffer, and backward only
scales that buffer. The student and teacher logits need not outlive the forward, and peak
extra memory is one gradient-sized buffer plus a few ``chunk x V`` temporaries.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor

# What the KL term distils towards ("q" above):
#   full    - the teacher's distribution p_T (word-level KD);
#   top1    - one-hot on the teacher's top-1 (top-1 information only, no correlations);
#   topk    - p_T renormalised over the teacher's top-k (k = kd_topk);
#   no_top1 - p_T with its top-1 removed and renormalised (KD without top-1 information).
TEACHER_TARGETS = ("full", "top1", "topk", "no_top1")

# Auto chunking keeps each chunk x V float32 temporary near 64 MiB.
_AUTO_CHUNK_ELEMENTS = 1 << 24


class KDTerms(NamedTuple):
    loss: Tensor  # weight * (sum of the enabled terms); carries the gradient
    kl: Tensor  # detached sums over included positions, for logging
    top1: Tensor
    topk: Tensor
    student_argmax: Tensor  # (...,) long, student's top-1 id at every position
    teacher_argmax: Tensor  # (...,) long, teacher's top-1 id at every position


def chunk_rows(num_rows: int, vocab: int, chunk_tokens: Optional[int]) -> int:
    """Rows per chunk: ``chunk_tokens`` if positive, else sized to ~64 MiB temporaries."""
    if chunk_tokens and chunk_tokens > 0:
        return max(1, min(num_rows, chunk_tokens))
    return max(1, min(num_rows, _AUTO_CHUNK_ELEMENTS // max(1, vocab)))


def _kl_chunk(ls: Tensor, ps: Tensor, lt: Tensor, zt: Tensor, t_arg: Tensor, k: int, target: str):
    """Per-row KL(q || p_S) and its gradient w.r.t. the student logits (p_S - q).

    Renormalised targets are computed from the teacher logits ``zt``, not from the
    log-probabilities ``lt``: with large logits, ``lt`` carries a large offset whose
    rounding error would survive the renormalisation.
    """
    if target == "full":
        q = lt.exp()
        return (q * (lt - ls)).sum(-1), ps - q
    if target == "top1":
        kl = -ls.gather(1, t_arg[:, None]).squeeze(1)
        grad = ps.scatter_add(1, t_arg[:, None], -torch.ones_like(ls[:, :1]))
        return kl, grad
    if target == "topk":
        idx = lt.topk(k, dim=-1).indices
        lq = zt.gather(1, idx).log_softmax(-1)
        q = lq.exp()
        kl = (q * (lq - ls.gather(1, idx))).sum(-1)
        return kl, ps.scatter_add(1, idx, -q)
    if target == "no_top1":
        lq = zt.scatter(1, t_arg[:, None], float("-inf")).log_softmax(-1)
        q = lq.exp()  # exactly 0 at the teacher's top-1
        lq = lq.scatter(1, t_arg[:, None], 0.0)  # 0 * (0 - ls) = 0 there, no nan
        return (q * (lq - ls)).sum(-1), ps - q
    raise ValueError(f"teacher_target must be one of {TEACHER_TARGETS}, got {target!r}")


def _rank_chunk(ps: Tensor, lt: Tensor, zs: Tensor, k: int, use_top1: bool, use_topk: bool):
    """Per-row ranking terms and their gradient w.r.t. the student logits.

    The terms depend on p_S only at the 2k gathered ids, so their gradient w.r.t. p_S is
    sparse (g_t at the teacher's top-k ids, g_s at the student's); through the softmax it
    becomes ``p_S * (G - <G, p_S>)``.
    """
    zero = ps.new_zeros(ps.size(0))
    t_idx = lt.topk(k, dim=-1).indices  # ordered: t_idx[:, 0] is the teacher's top-1
    ps_t = ps.gather(1, t_idx)
    g_t = torch.zeros_like(ps_t)
    top1 = topk = zero
    if use_top1:
        d = ps_t[:, 1:] - ps_t[:, :1]
        top1 = d.clamp_min(0).sum(-1)
        active = (d > 0).to(ps.dtype)
        g_t[:, 1:] += active
        g_t[:, 0] -= active.sum(-1)
    dot = (g_t * ps_t).sum(-1)
    if use_topk:
        s_idx = zs.topk(k, dim=-1).indices
        ps_s = ps.gather(1, s_idx)
        pt_t = lt.gather(1, t_idx).exp()
        pt_s = lt.gather(1, s_idx).exp()
        teacher_prefers = pt_t[:, :, None] > pt_s[:, None, :]  # [a, b]: p_T(a) > p_T(b)
        diff = ps_s[:, None, :] - ps_t[:, :, None]  # [a, b]: p_S(b) - p_S(a)
        topk = (diff.clamp_min(0) * teacher_prefers).sum((1, 2))
        active = (teacher_prefers & (diff > 0)).to(ps.dtype)
        g_s = active.sum(1)
        g_topk_t = -active.sum(2)
        g_t += g_topk_t
        dot = dot + (g_s * ps_s).sum(-1) + (g_topk_t * ps_t).sum(-1)
    grad = ps * -dot[:, None]
    grad.scatter_add_(1, t_idx, g_t * ps_t)
    if use_topk:
        grad.scatter_add_(1, s_idx, g_s * ps_s)
    return top1, topk, grad


def _terms(zs_all, zt_all, mask, k, use_kl, use_top1, use_topk, target, chunk, grad_buf, weight):
    """Walk row chunks; return term sums and argmaxes, filling grad_buf if given."""
    rows, vocab = zs_all.shape
    sums = torch.zeros(3, dtype=torch.float64, device=zs_all.device)
    s_arg = torch.empty(rows, dtype=torch.long, device=zs_all.device)
    t_arg = torch.empty_like(s_arg)
    # Half-precision logits are upcast chunk by chunk; float64 stays float64.
    compute_dtype = torch.promote_types(zs_all.dtype, torch.float32)
    for start in range(0, rows, chunk):
        end = min(rows, start + chunk)
        zs = zs_all[start:end].to(compute_dtype)
        zt = zt_all[start:end].to(compute_dtype)
        m = mask[start:end].to(zs.dtype)
        ls = zs.log_softmax(-1)
        lt = zt.log_softmax(-1)
        s_arg[start:end] = zs.argmax(-1)
        t_arg[start:end] = lt.argmax(-1)
        ps = ls.exp()  # read-only below: each term builds its own gradient tensor
        grad = None
        if use_kl:
            kl, grad = _kl_chunk(ls, ps, lt, zt, t_arg[start:end], k, target)
            sums[0] += (kl * m).sum()
        if use_top1 or use_topk:
            top1, topk, g_rank = _rank_chunk(ps, lt, zs, k, use_top1, use_topk)
            sums[1] += (top1 * m).sum()
            sums[2] += (topk * m).sum()
            grad = g_rank if grad is None else grad.add_(g_rank)
        if grad_buf is not None:
            if grad is None:
                grad_buf[start:end] = 0
            else:
                grad_buf[start:end] = grad.mul_(m[:, None] * weight)
    return sums, s_arg, t_arg


def _weighted_total(sums: Tensor, enabled, weight: float, dtype: torch.dtype) -> Tensor:
    # Reported in at least float32: a half-precision sum over a batch can overflow.
    total = (sums * sums.new_tensor(enabled)).sum().mul(weight)
    return total.to(torch.promote_types(dtype, torch.float32))


class _TieKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zs, zt, mask, k, use_kl, use_top1, use_topk, target, chunk, weight):
        grad_buf = torch.empty_like(zs)
        sums, s_arg, t_arg = _terms(
            zs, zt, mask, k, use_kl, use_top1, use_topk, target, chunk, grad_buf, weight
        )
        ctx.save_for_backward(grad_buf)
        loss = _weighted_total(sums, (use_kl, use_top1, use_topk), weight, zs.dtype)
        ctx.mark_non_differentiable(sums, s_arg, t_arg)
        return loss, sums, s_arg, t_arg

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        (grad_buf,) = ctx.saved_tensors
        # The buffer already holds weight * d(terms)/dz; an upstream factor of 1 (plain
        # fp32 training) needs no copy.
        grad = grad_buf if bool(grad_loss == 1) else grad_buf * grad_loss.to(grad_buf.dtype)
        return (grad,) + (None,) * 9


def tie_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    k: int = 5,
    *,
    kl: bool = True,
    top1: bool = True,
    topk: bool = True,
    teacher_target: str = "full",
    chunk_tokens: Optional[int] = None,
    weight: float = 1.0,
) -> KDTerms:
    """TIE-KD terms for one pass.

    Args:
        student_logits: ``(..., V)`` unnormalised student scores (any float dtype).
        teacher_logits: ``(..., V)`` teacher scores or log-probabilities (normalised here).
        mask: ``(...)`` bool, True at positions that count (non-pad targets).
        k: size of the top-k sets of the ranking terms (and of ``teacher_target="topk"``).
        kl, top1, topk: which terms enter ``loss`` (switched-off terms cost nothing, except
            that ``kl`` is always reported as 0 when off).
        teacher_target: what the KL term distils towards, one of ``TEACHER_TARGETS``.
        chunk_tokens: positions per chunk (None/0: automatic); results do not depend on it.
        weight: factor applied to ``loss`` (and to its gradient).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape (same vocabulary needed)"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be {tuple(student_logits.shape[:-1])}")
    vocab = student_logits.size(-1)
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, vocabulary size {vocab}], got {k}")
    if teacher_target not in TEACHER_TARGETS:
        raise ValueError(f"teacher_target must be one of {TEACHER_TARGETS}, got {teacher_target!r}")
    lead = student_logits.shape[:-1]
    zs = student_logits.reshape(-1, vocab)
    zt = teacher_logits.detach().reshape(-1, vocab)
    m = mask.reshape(-1)
    chunk = chunk_rows(zs.size(0), vocab, chunk_tokens)
    args = (zs, zt, m, k, kl, top1, topk, teacher_target, chunk)
    if zs.requires_grad and torch.is_grad_enabled():
        loss, sums, s_arg, t_arg = _TieKDFunction.apply(*args, weight)
    else:
        sums, s_arg, t_arg = _terms(*args, None, weight)
        loss = _weighted_total(sums, (kl, top1, topk), weight, zs.dtype)
    sums = sums.to(loss.dtype)
    return KDTerms(
        loss=loss,
        kl=sums[0],
        top1=sums[1],
        topk=sums[2],
        student_argmax=s_arg.view(lead),
        teacher_argmax=t_arg.view(lead),
    )


def next_decoder_input(gold_prev: Tensor, predictions: Tensor, pad: int) -> Tensor:
    """Decoder input of the next iterative pass: ``[bos] + predictions[:-1]``.

    ``gold_prev`` is the gold-prefix decoder input (its first non-pad token is the
    start symbol); padding stays where it is in ``gold_prev``, so the decoder sees the same
    lengths and padding mask as in the gold pass. Returns a new tensor.
    """
    shifted = torch.cat([gold_prev[:, :1], predictions[:, :-1]], dim=1)
    not_pad = gold_prev.ne(pad)
    start = not_pad & (not_pad.long().cumsum(1) == 1)
    return torch.where(start | ~not_pad, gold_prev, shifted)
