"""DEC-style clustering losses of AnchorCL (spec/anchor.md 3.1-3.4).

Xie, Girshick, Farhadi, "Unsupervised Deep Embedding for Clustering Analysis", ICML 2016
(Student-t assignment, sharpened target); Zhang et al., "Supporting Clustering with
Contrastive Learning", NAACL 2021 (the anchor loss); Sundareswaran et al., "Cluster Analysis
with Deep Embeddings and Contrastive Learning", arXiv 2109.12714 (their combination).

Precision: every function runs in float32 (float64 stays) with autocast disabled for the
inputs' device: the Student-t distances of raw backbone features (large, so bf16 would lose
their differences), the softmax over clusters, the DEC target and the logs of the KL terms.
bf16/fp16 inputs are promoted; their gradients come back in their own dtype.
"""

from __future__ import annotations

import torch

from deepclust.precision import fp32
from deepclust.precision import full as _full_precision

#: added inside the logarithms of the KL terms (SCCL's value; spec/anchor.md 3.3, 3.4 and 10.1)
LOG_EPS = 1e-8
#: added to the soft cluster frequencies of the DEC target (spec/anchor.md 3.2)
FREQ_EPS = 1e-9


def student_t_assignment(h: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DEC's soft assignment of features h (B, D) to centres (K, D), rows summing to 1:

        q_nk = (1 + ||h_n - mu_k||^2 / alpha)^(-(alpha+1)/2) / sum_k' (same for k')

    computed as a softmax over k of -(alpha+1)/2 * log1p(d^2 / alpha) (identical, but it cannot
    underflow for far-away centres). The squared distances are exact differences, not the
    ``|h|^2 - 2 h.mu + |mu|^2`` expansion, since raw backbone features are large. Gradients
    flow into h and the centres. No normalisation of h, no temperature (spec/anchor.md 9).
    """
    with fp32(h):
        h = _full_precision(h)
        c = centers.to(h.dtype)
        d2 = (h.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)
        log_kernel = -(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha)
        return torch.softmax(log_kernel, dim=1)


def dec_target(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target from the current batch, held constant (no gradient):

        f_k = sum_n q_nk + 1e-9,   p_nk = (q_nk^2 / f_k) / sum_k' (q_nk'^2 / f_k')

    Recomputed from every mini-batch (the method's choice, spec/anchor.md 3.2); the division
    by the soft frequency f_k is what discourages one cluster from taking everything.
    """
    with fp32(q):
        q = _full_precision(q.detach())
        w = q.pow(2) / (q.sum(dim=0, keepdim=True) + FREQ_EPS)
        return w / w.sum(dim=1, keepdim=True)


def dec_loss(q: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """DEC's clustering loss KL(P || Q) with P = dec_target(q) held constant:

        L_clu = (1/B) sum_n sum_k p_nk [log p_nk - log(q_nk + 1e-8)]

    (terms with p_nk = 0 contribute 0). Summed over clusters, mean over the batch.
    ``target``: a given P (B, K) instead of the batch's own, e.g. rows of a full-dataset
    target (classic DEC; spec/anchor.md 10.9); it is held constant too.
    """
    with fp32(q):
        q = _full_precision(q)
        p = dec_target(q) if target is None else _full_precision(target.detach()).to(q.dtype)
        kl = torch.xlogy(p, p) - p * torch.log(q + LOG_EPS)
        return kl.sum(dim=1).mean()


def anchor_loss(q_anchor: torch.Tensor, q_view: torch.Tensor) -> torch.Tensor:
    """Anchor loss KL(q_anchor || q_view), the clean view's assignment held constant:

        L_anc = (1/B) sum_n sum_k qa_nk [log(qa_nk + 1e-8) - log(qv_nk + 1e-8)]

    The multiplier is qa without the epsilon, as in SCCL. Gradients reach q_view only. Call it
    once per augmented view and add the results (spec/anchor.md 3.4).
    """
    with fp32(q_view):
        qa = _full_precision(q_anchor.detach())
        qv = _full_precision(q_view)
        kl = qa * (torch.log(qa + LOG_EPS) - torch.log(qv + LOG_EPS))
        return kl.sum(dim=1).mean()
