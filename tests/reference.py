"""A direct, slow restatement of ../shared/docs/tie_kd.md, one position at a time.

Written for clarity, not speed: plain autograd through softmax, loops over positions and
over the top-k sets. The tests compare the project's loss against it (values and gradients).
"""
import torch


def teacher_target_dist(p_t, k, target):
    """The distribution q the KL term distils towards (see losses.TEACHER_TARGETS)."""
    top = torch.argsort(p_t, descending=True)
    q = torch.zeros_like(p_t)
    if target == "full":
        return p_t
    if target == "top1":
        q[top[0]] = 1.0
    elif target == "topk":
        q[top[:k]] = p_t[top[:k]] / p_t[top[:k]].sum()
    elif target == "no_top1":
        rest = top[1:]
        q[rest] = p_t[rest] / p_t[rest].sum()
    return q


def position_terms(z_s, z_t, k, target="full"):
    """(KL, L_top1, L_topk) at one position, from the formulas in tie_kd.md."""
    p_s = torch.softmax(z_s, -1)
    p_t = torch.softmax(z_t, -1)
    q = teacher_target_dist(p_t, k, target)
    kl = sum(q[v] * (torch.log(q[v]) - torch.log(p_s[v])) for v in range(len(q)) if q[v] > 0)
    t_k = torch.argsort(p_t, descending=True)[:k]
    s_k = torch.argsort(p_s.detach(), descending=True)[:k]
    top1 = sum(torch.relu(p_s[t_k[j]] - p_s[t_k[0]]) for j in range(1, k)) if k > 1 else z_s.new_zeros(())
    topk = z_s.new_zeros(())
    for a in t_k:
        for b in s_k:
            if p_t[a] > p_t[b]:
                topk = topk + torch.relu(p_s[b] - p_s[a])
    return kl, top1 + 0 * z_s.sum(), topk


def reference_terms(student_logits, teacher_logits, mask, k, target="full"):
    """Sums of (KL, L_top1, L_topk) over positions where mask is True."""
    v = student_logits.size(-1)
    zs, zt, m = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), mask.reshape(-1)
    total = [student_logits.new_zeros(()) for _ in range(3)]
    for i in range(zs.size(0)):
        if m[i]:
            for j, term in enumerate(position_terms(zs[i], zt[i], k, target)):
                total[j] = total[j] + term
    return total
