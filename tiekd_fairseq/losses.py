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

The chunk loop (``_terms``) takes its logits from a callable, so that ``fused_output`` can
feed it logits made chunk by chunk from decoder features instead of whole logit tensors.
"""

import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

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


def _kl_chunk(zs, zt, lse_s, lse_t, t_idx, t_arg, target):
    """Per-row KL(q || p_S), and q for the gradient ``p_S - q``: dense, or sparse (idx, vals).

    Works on logits and row log-sum-exps (``log p = z - lse``) so that no log-probability
    tensor is materialised; renormalised targets are built from the teacher logits, whose
    rounding errors do not grow with the logits' offset.
    """
    if target == "full":
        q = (zt - lse_t).exp_()
        # sum_v q (log q - log p_S) = sum_v q (zt - zs) - lse_t + lse_s; summed with
        # torch's pairwise sum (a batched dot was faster but 10x less accurate in float32)
        kl = (zt - zs).mul_(q).sum(-1) + (lse_s - lse_t).view(-1)
        return kl, q, None
    if target == "top1":
        kl = (lse_s - zs.gather(1, t_arg[:, None])).view(-1)
        return kl, None, (t_arg[:, None], torch.ones_like(kl)[:, None])
    if target == "topk":
        lq = zt.gather(1, t_idx).log_softmax(-1)
        q = lq.exp()
        kl = (q * (lq - zs.gather(1, t_idx) + lse_s)).sum(-1)
        return kl, None, (t_idx, q)
    if target == "no_top1":
        lq = zt.scatter(1, t_arg[:, None], float("-inf")).log_softmax(-1)
        q = lq.exp()  # exactly 0 at the teacher's top-1
        lq.scatter_(1, t_arg[:, None], 0.0)  # 0 * (0 - log p_S) = 0 there, no nan
        kl = (q * (lq - zs + lse_s)).sum(-1)
        return kl, q, None
    raise ValueError(f"teacher_target must be one of {TEACHER_TARGETS}, got {target!r}")


def _rank_chunk(ps, zt, lse_t, t_idx, s_idx, use_top1, use_topk):
    """Per-row ranking terms, and their gradient w.r.t. p_S as sparse (idx, G) pairs.

    The terms depend on p_S only at the 2k gathered ids; through the softmax a sparse
    gradient G becomes ``p_S * (G - <G, p_S>)``, so the caller needs ``dot = <G, p_S>`` and
    the sparse values ``G * p_S`` at the ids.
    """
    zero = ps.new_zeros(ps.size(0))
    ps_t = ps.gather(1, t_idx)  # t_idx[:, 0] is the teacher's top-1
    g_t = torch.zeros_like(ps_t)
    top1 = topk = zero
    sparse = []
    if use_top1:
        d = ps_t[:, 1:] - ps_t[:, :1]
        top1 = d.clamp_min(0).sum(-1)
        active = (d > 0).to(ps.dtype)
        g_t[:, 1:] += active
        g_t[:, 0] -= active.sum(-1)
    if use_topk:
        ps_s = ps.gather(1, s_idx)
        pt_t = (zt.gather(1, t_idx) - lse_t).exp()
        pt_s = (zt.gather(1, s_idx) - lse_t).exp()
        teacher_prefers = pt_t[:, :, None] > pt_s[:, None, :]  # [a, b]: p_T(a) > p_T(b)
        diff = ps_s[:, None, :] - ps_t[:, :, None]  # [a, b]: p_S(b) - p_S(a)
        topk = (diff.clamp_min(0) * teacher_prefers).sum((1, 2))
        active = (teacher_prefers & (diff > 0)).to(ps.dtype)
        g_t -= active.sum(2)
        sparse.append((s_idx, active.sum(1) * ps_s))
    sparse.append((t_idx, g_t * ps_t))
    dot = sum(v.sum(-1) for _, v in sparse)
    return top1, topk, dot, sparse


class LabelSmoothedCE(NamedTuple):
    """The gold pass's label-smoothed cross-entropy, computed by ``_terms`` on the same chunks
    as the KD terms (fused path). Same definition as fairseq's ``label_smoothed_nll_loss``:
    ``(1 - eps - eps_i) * nll + eps_i * sum_v -log p_S(v)``, ``eps_i = eps / (V - 1)``."""

    target: Tensor  # (rows,) gold ids
    epsilon: float
    weight: float  # factor of the CE in the differentiated total


# (start, end) -> (student logits, teacher logits) of rows start:end, in the compute dtype;
# the teacher's may be None when no KD term is enabled.
ChunkLogits = Callable[[int, int], Tuple[Tensor, Optional[Tensor]]]
# (start, end, d total / d student logits of rows start:end); the tensor is scratch space.
GradSink = Callable[[int, int, Tensor], None]

# Order of the float64 sums returned by _terms.
KL, TOP1, TOPK, NLL, SMOOTH = range(5)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed (and their gradients kept) in float32; float64 stays."""
    return torch.promote_types(dtype, torch.float32)


def _terms(rows: int, chunk_logits: ChunkLogits, mask: Tensor, k, use_kl, use_top1, use_topk, target,
           chunk: int, grad_sink: Optional[GradSink], weight: float, ce: Optional[LabelSmoothedCE] = None):
    """Walk row chunks; return the float64 sums (KL, TOP1, TOPK, NLL, SMOOTH above) over
    included rows and both argmaxes, handing the gradient of
    ``weight * (enabled terms) + ce.weight * CE`` w.r.t. each chunk's student logits to
    ``grad_sink`` if given."""
    device = mask.device
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    s_arg = torch.empty(rows, dtype=torch.long, device=device)
    t_arg = torch.full_like(s_arg, -1)
    use_rank = use_top1 or use_topk
    for start in range(0, rows, chunk):
        end = min(rows, start + chunk)
        zs, zt = chunk_logits(start, end)
        m = mask[start:end].to(zs.dtype)
        lse_s = zs.logsumexp(-1, keepdim=True)
        ps = (zs - lse_s).exp_()
        # top-k indices are ordered, so their first column is the argmax
        t_idx = zt.topk(k, dim=-1).indices if use_rank or (use_kl and target == "topk") else None
        s_idx = zs.topk(k, dim=-1).indices if use_topk else None
        s_arg[start:end] = s_idx[:, 0] if s_idx is not None else zs.argmax(-1)
        q, sparse, dot = None, [], zs.new_zeros(end - start)
        if zt is not None:  # None only when no KD term is enabled (CE alone)
            lse_t = zt.logsumexp(-1, keepdim=True)
            t_arg[start:end] = t_idx[:, 0] if t_idx is not None else zt.argmax(-1)
        if use_kl:
            kl, q, q_sparse = _kl_chunk(zs, zt, lse_s, lse_t, t_idx, t_arg[start:end], target)
            sums[KL] += (kl * m).sum()
            if q_sparse is not None:
                sparse.append((q_sparse[0], -q_sparse[1]))
        if use_rank:
            top1, topk, dot, rank_sparse = _rank_chunk(ps, zt, lse_t, t_idx, s_idx, use_top1, use_topk)
            sums[TOP1] += (top1 * m).sum()
            sums[TOPK] += (topk * m).sum()
            sparse += rank_sparse
        if ce is not None:
            gold = ce.target[start:end, None]
            sums[NLL] += ((lse_s - zs.gather(1, gold)).view(-1) * m).sum()
            if ce.epsilon > 0:
                sums[SMOOTH] += ((lse_s - zs).sum(-1) * m).sum()
        if grad_sink is None:
            continue
        # d(weight * terms)/dz = wm * [p_S * (use_kl - dot) - q_dense + scatter(sparse)];
        # d CE/dz = p_S - (1 - eps - eps_i) * onehot(gold) - eps_i (the p_S factors sum to 1)
        wm = (m * weight)[:, None]
        coef = (float(use_kl) - dot[:, None]) * wm
        if ce is not None:
            cm = (m * ce.weight)[:, None]
            coef = coef + cm
        grad = ps.mul_(coef)  # ps is not needed any more
        if q is not None:
            grad.addcmul_(q, wm, value=-1.0)
        for idx, vals in sparse:
            grad.scatter_add_(1, idx, vals * wm)
        if ce is not None:
            eps_i = ce.epsilon / (zs.size(1) - 1)
            if eps_i > 0:
                grad.sub_(cm * eps_i)
            grad.scatter_add_(1, gold, cm * -(1.0 - ce.epsilon - eps_i))
        grad_sink(start, end, grad)
    return sums, s_arg, t_arg


def label_smoothed_ce(sums: Tensor, epsilon: float, vocab: int) -> Tensor:
    """fairseq's label-smoothed CE from the NLL and SMOOTH sums of ``_terms``."""
    eps_i = epsilon / (vocab - 1)
    return (1.0 - epsilon - eps_i) * sums[NLL] + eps_i * sums[SMOOTH]


def kd_total(sums: Tensor, enabled, weight: float) -> Tensor:
    """weight * (sum of the enabled KD terms), float64."""
    return (sums[:3] * sums.new_tensor(enabled)).sum().mul(weight)


def slices(zs_all: Tensor, zt_all: Tensor, dtype: torch.dtype) -> ChunkLogits:
    """ChunkLogits of whole logit tensors: row slices, upcast chunk by chunk."""
    return lambda start, end: (zs_all[start:end].to(dtype), zt_all[start:end].to(dtype))


def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True), so that it may run
    again and read its saved buffers. torch has no public way to ask; without this private
    one, assume it is kept."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if probe is None else bool(probe())


def scaled_gradient(buffer: Tensor, factor: Tensor, dtype: torch.dtype) -> Tensor:
    """``buffer * factor`` rounded to ``dtype`` (scale, then round, as fairseq's own fp16 CE path
    does: rounded first, small entries would flush to 0). In place when no later backward can
    read the buffer, so that it costs no copy; the factor is never read on the host (that would
    wait for the GPU on every backward)."""
    if _graph_kept():
        return (buffer * factor).to(dtype)
    return buffer.mul_(factor).to(dtype)


class _TieKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zs, zt, mask, k, use_kl, use_top1, use_topk, target, chunk, weight):
        dtype = compute_dtype(zs.dtype)
        # Kept in float32 for half inputs: rounded to half before backward applies the loss
        # scale, most small entries of a 32k-vocabulary gradient would flush to 0.
        grad_buf = torch.empty(zs.shape, dtype=dtype, device=zs.device)

        def sink(start, end, grad):
            grad_buf[start:end] = grad

        sums, s_arg, t_arg = _terms(zs.size(0), slices(zs, zt, dtype), mask, k, use_kl, use_top1,
                                    use_topk, target, chunk, sink, weight)
        ctx.save_for_backward(grad_buf)
        ctx.input_dtype = zs.dtype
        loss = kd_total(sums, (use_kl, use_top1, use_topk), weight).to(dtype)
        ctx.mark_non_differentiable(sums, s_arg, t_arg)
        return loss, sums, s_arg, t_arg

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        (grad_buf,) = ctx.saved_tensors
        return (scaled_gradient(grad_buf, grad_loss, ctx.input_dtype),) + (None,) * 9


def ensemble_scores(scores: Sequence[Tensor]) -> Tensor:
    """One teacher's scores as they are; an ensemble's: the log of its members' mean probability."""
    if len(scores) == 1:
        return scores[0]
    log_probs = torch.stack([z.float().log_softmax(-1) for z in scores])
    return log_probs.logsumexp(0) - math.log(len(scores))


def check_options(k: int, vocab: int, teacher_target: str) -> None:
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, vocabulary size {vocab}], got {k}")
    if teacher_target not in TEACHER_TARGETS:
        raise ValueError(f"teacher_target must be one of {TEACHER_TARGETS}, got {teacher_target!r}")


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
    check_options(k, vocab, teacher_target)
    lead = student_logits.shape[:-1]
    zs = student_logits.reshape(-1, vocab)
    zt = teacher_logits.detach().reshape(-1, vocab)
    m = mask.reshape(-1)
    chunk = chunk_rows(zs.size(0), vocab, chunk_tokens)
    if zs.requires_grad and torch.is_grad_enabled():
        loss, sums, s_arg, t_arg = _TieKDFunction.apply(zs, zt, m, k, kl, top1, topk, teacher_target,
                                                        chunk, weight)
    else:
        dtype = compute_dtype(zs.dtype)
        sums, s_arg, t_arg = _terms(zs.size(0), slices(zs, zt, dtype), m, k, kl, top1, topk,
                                    teacher_target, chunk, None, weight)
        loss = kd_total(sums, (kl, top1, topk), weight).to(dtype)
    # Reported in at least float32: a half-precision sum over a batch can overflow.
    sums = sums.to(loss.dtype)
    return KDTerms(
        loss=loss,
        kl=sums[0],
        top1=sums[1],
        topk=sums[2],
        student_argmax=s_arg.view(lead),
        teacher_argmax=t_arg.view(lead),
    )


def next_decoder_input(gold_prev: Tensor, predictions: Tensor, pad: int, unk: int) -> Tensor:
    """Decoder input of the next iterative pass: ``[bos] + predictions[:-1]``.

    ``gold_prev`` is the gold-prefix decoder input (its first non-pad token is the
    start symbol); padding stays where it is in ``gold_prev``, so the decoder sees the same
    lengths and padding mask as in the gold pass. A predicted pad becomes ``unk``: fed as pad,
    the decoder would mask that position out of self-attention and give it pad's position.
    Returns a new tensor.
    """
    fed = predictions[:, :-1].masked_fill(predictions[:, :-1].eq(pad), unk)
    shifted = torch.cat([gold_prev[:, :1], fed], dim=1)
    not_pad = gold_prev.ne(pad)
    start = not_pad & (not_pad.long().cumsum(1) == 1)
    return torch.where(start | ~not_pad, gold_prev, shifted)
