"""CDC (reconstruction of spec/cdc.md section 3): the losses against loop-based transcriptions
of their formulas (values and gradients), the negative-weighting and gradient identities of
3.3/3.4, the Sinkhorn targets and the queue, backbone initialisation, and a short digits run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from deepclust.cluster import sinkhorn
from deepclust.config import resolve_config
from deepclust.engine import io, train
from deepclust.engine.trainer import Trainer
from deepclust.errors import CheckpointError, ConfigError
from deepclust.losses.cdc import (
    cdc_contrastive_loss,
    cdc_entropy_loss,
    cdc_sinkhorn_soft,
    cdc_swapped_prediction_loss,
)
from deepclust.methods import DataInfo, create_method

# ----------------------------------------------------------------------------------------------
# independent transcriptions
# ----------------------------------------------------------------------------------------------


def ref_cdc_loss(p1, z1, p2, z2, tau_p, tau_z, combine="additive", eps=1e-6, neg_p=None, neg_z=None):
    """L = (1/2B) sum_a [ -s(a,a+) + log sum_{b != a} exp s(a,b) ], one anchor and one pair at a time."""
    p = list(p1) + list(p2)
    z = [v / torch.sqrt((v * v).sum()) for v in list(z1) + list(z2)]
    negs = []
    if neg_p is not None:
        negs = [(neg_p[j], neg_z[j] / torch.sqrt((neg_z[j] ** 2).sum())) for j in range(neg_p.shape[0])]
    n, b = len(p), p1.shape[0]

    def s(pa, za, pb, zb):
        if combine == "additive":
            return torch.dot(pa, pb) / tau_p + torch.dot(za, zb) / tau_z
        return torch.log(torch.dot(pa, pb) + eps) + torch.dot(za, zb) / tau_z

    total = 0.0
    for a in range(n):
        pos = (a + b) % n
        den = sum(torch.exp(s(p[a], z[a], p[c], z[c])) for c in range(n) if c != a)
        den = den + sum(torch.exp(s(p[a], z[a], pn, zn)) for pn, zn in negs)
        total = total - s(p[a], z[a], p[pos], z[pos]) + torch.log(den)
    return total / n


def random_inputs(seed: int, b: int = 5, k: int = 4, d: int = 6, sharp: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    p1 = torch.softmax(sharp * torch.randn(b, k, generator=g, dtype=torch.float64), 1)
    p2 = torch.softmax(sharp * torch.randn(b, k, generator=g, dtype=torch.float64), 1)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (p1, z1, p2, z2)]


# ----------------------------------------------------------------------------------------------
# the contrastive loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["additive", "multiplicative"])
@pytest.mark.parametrize("tau_p,tau_z", [(1.0, 0.5), (0.3, 0.2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_loss_matches_transcription(combine: str, tau_p: float, tau_z: float, seed: int) -> None:
    ours_in = random_inputs(seed)
    ref_in = [t.detach().clone().requires_grad_() for t in ours_in]
    ours = cdc_contrastive_loss(*ours_in, tau_p=tau_p, tau_z=tau_z, combine=combine)
    ref = ref_cdc_loss(*ref_in, tau_p, tau_z, combine)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    ours.backward()
    ref.backward()
    for a, r in zip(ours_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-7, atol=1e-10)


def test_contrastive_loss_with_queue_negatives() -> None:
    p1, z1, p2, z2 = random_inputs(3)
    g = torch.Generator().manual_seed(7)
    neg_p = torch.softmax(torch.randn(7, 4, generator=g, dtype=torch.float64), 1).requires_grad_()
    neg_z = torch.randn(7, 6, generator=g, dtype=torch.float64).requires_grad_()
    ours = cdc_contrastive_loss(p1, z1, p2, z2, 0.7, 0.4, neg_p=neg_p, neg_z=neg_z)
    ref = ref_cdc_loss(
        p1.detach(), z1.detach(), p2.detach(), z2.detach(), 0.7, 0.4, neg_p=neg_p.detach(), neg_z=neg_z.detach()
    )
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    ours.backward()
    assert neg_p.grad is None and neg_z.grad is None  # queued negatives are held constant
    assert p1.grad is not None and z1.grad.abs().sum() > 0
    # The queue can only add to every denominator.
    assert ours.item() > cdc_contrastive_loss(p1, z1, p2, z2, 0.7, 0.4).item()


def test_negative_weighting_identity() -> None:
    """Spec 3.3: the loss is an InfoNCE on z alone in which every term of anchor a's
    denominator (and its positive) is multiplied by w_ab = exp(p_a.p_b / tau_p)."""
    tau_p, tau_z = 0.5, 0.3
    p1, z1, p2, z2 = (t.detach() for t in random_inputs(11, b=6, k=3, d=5))
    b = p1.shape[0]
    p, z = torch.cat([p1, p2]), F.normalize(torch.cat([z1, z2]), dim=1)
    w = torch.exp(p @ p.t() / tau_p)  # the weights, computed on their own
    e = torch.exp(z @ z.t() / tau_z)  # instance-only similarities
    total = 0.0
    for a in range(2 * b):
        pos = (a + b) % (2 * b)
        den = sum(w[a, c] * e[a, c] for c in range(2 * b) if c != a)
        total += -torch.log(w[a, pos] * e[a, pos] / den)
    ours = cdc_contrastive_loss(p1, z1, p2, z2, tau_p, tau_z)
    assert ours.item() == pytest.approx((total / (2 * b)).item(), rel=1e-10)
    assert w.min() >= 1.0 and w.max() <= math.exp(1 / tau_p)


def test_uniform_p_reduces_to_nt_xent_about_log_2b_minus_1() -> None:
    """Spec 3.7 sanity value: with uniform p every weight is the same constant, so the loss is
    NT-Xent on z; for random unit z in high dimension that is about log(2B - 1)."""
    b, k, d, tau_z = 64, 10, 256, 0.5
    g = torch.Generator().manual_seed(0)
    p = torch.full((b, k), 1.0 / k)
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    ours = cdc_contrastive_loss(p, z1, p, z2, 1.0, tau_z)
    zn = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (zn @ zn.t() / tau_z).fill_diagonal_(float("-inf"))
    nt_xent = F.cross_entropy(sim, torch.cat([torch.arange(b, 2 * b), torch.arange(b)]))
    assert ours.item() == pytest.approx(nt_xent.item(), rel=1e-5)
    assert ours.item() == pytest.approx(math.log(2 * b - 1), abs=0.05)


def test_gradient_identities_against_autograd() -> None:
    """Spec 3.4 summed over anchors: with pi_ab = softmax_b s(a, .) (b != a) and c+ the pair of c,
    dL/dp_c = [ sum_b (pi_cb + pi_bc) p_b - 2 p_{c+} ] / (2B tau_p), likewise for z (on the
    tangent space of the sphere, the normalisation's Jacobian)."""
    tau_p, tau_z = 0.8, 0.4
    p1, z1, p2, z2 = random_inputs(5, b=4, k=3, d=6)
    with torch.no_grad():
        z1.copy_(F.normalize(z1, dim=1))
        z2.copy_(F.normalize(z2, dim=1))
    cdc_contrastive_loss(p1, z1, p2, z2, tau_p, tau_z).backward()
    b = p1.shape[0]
    p, z = torch.cat([p1, p2]).detach(), torch.cat([z1, z2]).detach()
    s = p @ p.t() / tau_p + z @ z.t() / tau_z
    s.fill_diagonal_(float("-inf"))
    pi = torch.softmax(s, dim=1)
    perm = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    gp = ((pi + pi.t()) @ p - 2 * p[perm]) / (2 * b * tau_p)
    gz = ((pi + pi.t()) @ z - 2 * z[perm]) / (2 * b * tau_z)
    gz = gz - (gz * z).sum(1, keepdim=True) * z  # Jacobian of normalize at unit vectors
    torch.testing.assert_close(torch.cat([p1.grad, p2.grad]), gp, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(torch.cat([z1.grad, z2.grad]), gz, rtol=1e-7, atol=1e-10)


def test_bad_combine_is_config_error() -> None:
    p1, z1, p2, z2 = random_inputs(0)
    with pytest.raises(ConfigError):
        cdc_contrastive_loss(p1, z1, p2, z2, combine="product")


# ----------------------------------------------------------------------------------------------
# equipartition terms
# ----------------------------------------------------------------------------------------------


def test_swapped_prediction_and_entropy_against_loops() -> None:
    g = torch.Generator().manual_seed(2)
    b, k = 6, 4
    l1 = torch.randn(b, k, generator=g, dtype=torch.float64, requires_grad=True)
    l2 = torch.randn(b, k, generator=g, dtype=torch.float64, requires_grad=True)
    q1 = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64), 1)
    q2 = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64), 1)
    lp1, lp2 = F.log_softmax(l1, 1), F.log_softmax(l2, 1)
    ours = cdc_swapped_prediction_loss(lp1, lp2, q1, q2)
    ref = 0.0
    for n in range(b):
        for j in range(k):
            e1 = torch.exp(l1[n]).sum()
            e2 = torch.exp(l2[n]).sum()
            ref = ref - q2[n, j] * torch.log(torch.exp(l1[n, j]) / e1) - q1[n, j] * torch.log(torch.exp(l2[n, j]) / e2)
    assert ours.item() == pytest.approx((ref / (2 * b)).item(), rel=1e-10)
    p1, p2 = torch.softmax(l1, 1), torch.softmax(l2, 1)
    ent = cdc_entropy_loss(p1, p2)
    pbar = [sum(float(p1[n, j].detach() + p2[n, j].detach()) for n in range(b)) / (2 * b) for j in range(k)]
    ref_ent = math.log(k) + sum(v * math.log(v) for v in pbar)  # log K - H(pbar)
    assert ent.item() == pytest.approx(ref_ent, rel=1e-9)
    assert cdc_entropy_loss(torch.full((3, k), 0.25), torch.full((3, k), 0.25)).item() == pytest.approx(0.0, abs=1e-7)
    # targets are constants
    q1r = q1.clone().requires_grad_()
    cdc_swapped_prediction_loss(lp1, lp2, q1r, q2).backward()
    assert q1r.grad is None


def test_soft_sinkhorn_matches_shared_sinkhorn_and_has_gradient() -> None:
    g = torch.Generator().manual_seed(4)
    s = (torch.rand(20, 5, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    for iters in (0, 3, 10):
        q = cdc_sinkhorn_soft(s, iters, 0.05)
        torch.testing.assert_close(q.float(), sinkhorn(s.detach(), iters, 0.05), rtol=1e-4, atol=1e-6)
    (q[:, 0] * torch.arange(20.0, dtype=torch.float64)).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# the method: Sinkhorn targets, queue, training step
# ----------------------------------------------------------------------------------------------


def make_cdc(k: int = 10, batch: int = 32, seed: int = 0, **opts):
    cfg = resolve_config(
        {
            "method": "cdc",
            "model": {"backbone": "small_cnn", "feature_dim": 16},
            "train": {"seed": seed, "batch_size": batch},
            "method_args": {"cat_dim": 16, "hidden_dim": 32, **opts},
        }
    )
    info = DataInfo(n_samples=100, n_channels=1, image_size=8, mean=[0.5], std=[0.25], n_clusters=k)
    torch.manual_seed(seed)
    return create_method(cfg, info)


def test_sinkhorn_targets_rows_and_columns() -> None:
    g = torch.Generator().manual_seed(0)
    b, k = 200, 8
    # skewed scores: cluster 0 dominates the raw argmax
    offset = 2.0 * F.normalize(torch.randn(16, generator=g), dim=0)
    u = torch.randn(b, 16, generator=g) * 0.5 + offset
    dev = []
    for iters in (3, 10, 50):
        m = make_cdc(k=k, sinkhorn_iters=iters)
        with torch.no_grad():
            m.prototypes[0] = offset
            logits = m.logits(u)
        q = m.sinkhorn_targets(logits)
        torch.testing.assert_close(q.sum(1), torch.ones(b), rtol=0, atol=1e-5)
        # SwAV's epsilon 0.05 (spec 3.7): the targets are exactly the transcription's
        torch.testing.assert_close(q.double(), ref_sinkhorn(logits, iters, 0.05), rtol=1e-4, atol=1e-6)
        dev.append((q.sum(0) - b / k).abs().max().item())
    assert (logits.argmax(1) == 0).float().mean() > 0.5  # the raw assignment is unbalanced
    assert dev[0] > dev[1] > dev[2] and dev[2] < 1e-3 * b / k
    raw_dev = (torch.bincount(logits.argmax(1), minlength=k).float() - b / k).abs().max().item()
    assert dev[0] < 0.5 * raw_dev  # even 3 iterations go most of the way


def test_queue_ring_buffer() -> None:
    m = make_cdc(queue_size=10)
    for i in range(3):
        m.enqueue(torch.full((4, 16), float(i)), torch.full((4, 16), float(i)))
    assert int(m.queue_len) == 10 and int(m.queue_ptr) == 2
    # rows 0,1 were overwritten by batch 2; rows 2,3 hold batch 0's last two rows
    assert m.queue_u[:, 0].tolist() == [2, 2, 0, 0, 1, 1, 1, 1, 2, 2]
    assert "queue_u" in m.state_dict() and "queue_len" in m.state_dict()


def test_queue_keeps_balance_when_k_exceeds_batch() -> None:
    """K=40 > batch 16: alone, a batch cannot be equipartitioned (each cluster would get 0.4 of a
    sample, so the targets are flat); with a queue of 640 rows the targets of a stream of
    batches are confident and spread over (nearly) all clusters, even though the raw scores
    put most samples in a few clusters."""
    k, b, n_batches = 40, 16, 80
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(k, 16, generator=g), dim=1)
    common = F.normalize(torch.randn(16, generator=g), dim=0)
    results = {}
    for qsize in (0, 640):
        m = make_cdc(k=k, batch=b, queue_size=qsize)
        with torch.no_grad():
            m.prototypes.copy_(centres)
            m.prototypes[:3] = common + 0.3 * centres[:3]  # three prototypes attract most samples
        gen = torch.Generator().manual_seed(1)
        hard, conf, raw, hit = [], [], [], []
        for step in range(n_batches):
            lab = torch.randint(0, k, (b,), generator=gen)
            u = centres[lab] + 0.3 * torch.randn(b, 16, generator=gen) + common
            with torch.no_grad():
                logits = m.logits(u)
            q = m.sinkhorn_targets(logits, m._queue_scores(epoch=0))
            m.enqueue(u, torch.zeros(b, 16))
            if step >= n_batches // 2:  # once the queue is full
                hard.append(q.argmax(1))
                conf.append(q.max(1).values)
                raw.append(logits.argmax(1))
                hit.append((q.argmax(1) == lab).float())
        counts = torch.bincount(torch.cat(hard), minlength=k).float()
        raw_counts = torch.bincount(torch.cat(raw), minlength=k).float()
        results[qsize] = (counts, torch.cat(conf).mean().item(), raw_counts, torch.cat(hit).mean().item())
    counts, conf, raw, hit = results[640]
    assert raw[:3].sum() > 0.4 * raw.sum()  # the raw argmax is far from balanced
    assert (counts > 0).sum() >= 0.9 * k
    assert counts.max() <= 3 * counts.mean()
    assert conf > 0.5
    assert results[0][1] < 0.6 * conf  # batch-only targets are flat
    assert hit > results[0][3] + 0.1  # and the queue's targets follow the data's clusters better


def test_training_step_wiring_matches_manual_computation() -> None:
    m = make_cdc(k=5, batch=12)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    state = torch.get_rng_state()
    out = m.training_step(images, torch.arange(12), epoch=0)
    torch.set_rng_state(state)
    x = torch.cat([m.augment(images), m.augment(images)])
    f = m(x)
    l1, l2 = f["logits"][:12], f["logits"][12:]
    p1, p2 = torch.softmax(l1 / 0.1, 1), torch.softmax(l2 / 0.1, 1)
    q1 = sinkhorn(l1.detach(), 3, 0.05)
    q2 = sinkhorn(l2.detach(), 3, 0.05)
    l_eq = -((q2 * torch.log(p1)).sum(1).mean() + (q1 * torch.log(p2)).sum(1).mean()) / 2
    l_con = cdc_contrastive_loss(p1, f["z"][:12], p2, f["z"][12:], 1.0, 0.5)
    assert out.loss.item() == pytest.approx((l_con + l_eq).item(), rel=1e-5)
    out.loss.backward()
    assert m.prototypes.grad is not None and m.prototypes.grad.abs().sum() > 0
    feats, probs = m.eval().infer(m.eval_transform(images))
    assert feats.shape == (12, m.backbone.out_dim) and probs.shape == (12, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(12))


def ref_sinkhorn(s: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp, transcribed: Q = exp(s / eps)^T (K x B), total mass 1; then per
    iteration every cluster row to 1/K and every sample column to 1/B; returns B Q^T."""
    q = torch.exp((s.double() - s.double().max()) / eps).t()
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iters):
        q = q / q.sum(1, keepdim=True) / k
        q = q / q.sum(0, keepdim=True) / b
    return (q * b).t()


def _expected_cdc_loss(m, l1, l2, z1, z2, qs):
    """spec/cdc.md 3.5-3.7 for the method's switches, from transcriptions only."""
    o = m.opts
    p1, p2 = torch.softmax(l1.double() / o.t_c, 1), torch.softmax(l2.double() / o.t_c, 1)
    b, k = p1.shape
    extra = [] if qs is None else [qs.double()]
    l_eq = torch.zeros((), dtype=torch.float64)
    c1, c2 = p1, p2
    if o.equipartition == "sinkhorn":
        q1 = ref_sinkhorn(torch.cat([l1.double(), *extra]), o.sinkhorn_iters, o.sinkhorn_eps)[:b]  # batch rows only
        q2 = ref_sinkhorn(torch.cat([l2.double(), *extra]), o.sinkhorn_iters, o.sinkhorn_eps)[:b]
        if o.sinkhorn_mode == "similarity":
            c1, c2 = q1, q2  # the balanced Q replaces p inside s(a, b); no swapped term
        else:
            l_eq = -((q2 * torch.log(p1)).sum(1).mean() + (q1 * torch.log(p2)).sum(1).mean()) / 2
    elif o.equipartition == "entropy":
        pbar = torch.cat([p1, p2]).mean(0)
        l_eq = o.entropy_weight * (math.log(k) + (pbar * torch.log(pbar)).sum())
    neg_p = neg_z = None
    if o.queue_negatives and qs is not None:
        neg_p = torch.softmax(qs.double() / o.t_c, 1)
        neg_z = m.queue_z[: int(m.queue_len)].double()
    l_con = ref_cdc_loss(c1, z1.double(), c2, z2.double(), o.tau_p, o.tau_z, o.combine, o.mult_eps, neg_p, neg_z)
    return l_con + o.lambda_eq * l_eq


def _replay(m, images: torch.Tensor, epoch: int, queue_used: bool) -> float:
    """One training step against :func:`_expected_cdc_loss` with the same augmentation draw;
    returns the expected loss had the queue been ignored (to show the queue mattered)."""
    b = images.shape[0]
    state = torch.get_rng_state()
    out = m.training_step(images, torch.arange(b), epoch=epoch)
    torch.set_rng_state(state)
    with torch.no_grad():
        f = m(torch.cat([m.augment(images), m.augment(images)]))
        l1, l2, z1, z2 = f["logits"][:b], f["logits"][b:], f["z"][:b], f["z"][b:]
        n = int(m.queue_len)
        qs = m.logits(m.queue_u[:n]) if queue_used and n > 0 else None
        assert (qs is not None) == queue_used
        expected = _expected_cdc_loss(m, l1, l2, z1, z2, qs)
        without = _expected_cdc_loss(m, l1, l2, z1, z2, None)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    m.after_optimizer_step(out)
    head = m.prototypes if m.opts.cat_head == "cosine" else m.cat_fc.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    m.zero_grad()
    return without.item()


@pytest.mark.parametrize(
    "opts",
    [
        {"equipartition": "entropy"},
        {"equipartition": "none", "combine": "multiplicative"},
        {"sinkhorn_mode": "similarity", "queue_size": 16},
        {"cat_head": "linear", "queue_size": 16, "queue_negatives": True, "infer_features": "instance"},
        {"queue_size": 16},  # Sinkhorn targets over batch + queue, only the batch rows kept
    ],
)
def test_switches_match_their_formulas(opts: dict) -> None:
    m = make_cdc(k=4, batch=8, **opts)
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    _replay(m, images, 0, queue_used=False)  # the queue is still empty
    queued = opts.get("queue_size", 0) > 0
    without = _replay(m, images, 0, queue_used=queued)  # a filled queue where there is one
    if queued:
        assert int(m.queue_len) == 16
        # the queue changed the loss (so the comparison above really covered it)
        state = torch.get_rng_state()
        loss = m.training_step(images, torch.arange(8), epoch=0).loss.item()
        torch.set_rng_state(state)
        assert abs(loss - without) > 1e-6


def test_queue_waits_for_queue_start_epoch() -> None:
    m = make_cdc(k=4, batch=8, queue_size=16, queue_start_epoch=1)
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    for _ in range(2):
        _replay(m, images, 0, queue_used=False)  # filled, but epoch 0 < queue_start_epoch
    assert int(m.queue_len) == 16
    _replay(m, images, 1, queue_used=True)


def test_invalid_option_is_config_error() -> None:
    with pytest.raises(ConfigError):
        make_cdc(equipartition="balanced")
    with pytest.raises(ConfigError):
        resolve_config({"method": "cdc", "method_args": {"tau_q": 1.0}})


# ----------------------------------------------------------------------------------------------
# engine: initialisation from another run, and a short digits run
# ----------------------------------------------------------------------------------------------


def _digits_cfg(method: str, out: Path, epochs: int = 1, **extra):
    raw = {
        "method": method,
        "data": {"name": "digits", "image_size": 8},
        "model": {"backbone": "small_cnn", "feature_dim": 16},
        "train": {"epochs": epochs, "batch_size": 256, "out": str(out), "device": "cpu", "progress": False},
        "eval": {"n_init": 1},
    }
    for k, v in extra.items():
        raw[k] = {**raw.get(k, {}), **v}
    return resolve_config(raw)


@pytest.mark.slow
def test_init_from_idfd_run_and_mismatch(tmp_path: Path) -> None:
    idfd_run = tmp_path / "idfd"
    train(_digits_cfg("idfd", idfd_run))
    saved = {
        k[len("backbone.") :]: v for k, v in io.load_checkpoint(idfd_run)["model"].items() if k.startswith("backbone.")
    }
    trainer = Trainer(_digits_cfg("cdc", tmp_path / "cdc", model={"init": str(idfd_run)}))
    own = trainer.method.backbone.state_dict()
    assert own.keys() == saved.keys()
    for k in own:
        torch.testing.assert_close(own[k], saved[k], rtol=0, atol=0)
    fresh = Trainer(_digits_cfg("cdc", tmp_path / "cdc2")).method.backbone.state_dict()
    assert any(not torch.equal(fresh[k], saved[k]) for k in fresh if fresh[k].is_floating_point())
    with pytest.raises(CheckpointError):
        Trainer(
            _digits_cfg(
                "cdc", tmp_path / "cdc3", model={"init": str(idfd_run), "backbone": "resnet18", "stem": "cifar"}
            )
        )


@pytest.mark.slow
def test_short_digits_run_has_no_empty_cluster(tmp_path: Path) -> None:
    cfg = _digits_cfg(
        "cdc",
        tmp_path / "run",
        epochs=2,
        train={"batch_size": 64},
        optim={"lr": 2e-3},
        augment={"crop_scale": [0.5, 1.0], "grayscale_p": 0.0, "flip_p": 0.0},
    )
    record = train(cfg)
    assert record["prediction"]["type"] == "head_argmax" and record["protocol"] == "train+test"
    assert record["cluster_sizes"]["empty"] == 0, record["cluster_sizes"]
    assert record["acc"] > 0.3


def test_instance_embedding_is_float32_under_bf16_autocast() -> None:
    """Under train.amp=bf16 the normalisation of g_z's output runs in float32: z, and the gradient
    L_con hands back to g_z's (bf16) output, are those of a float64 transcription of
    z = v / |v| on the same bf16 values. In bf16 (the regression) z came back bf16 with 8-bit
    rounding and the gradient through the norm was off by ~2% on views that lie close together,
    which cost CDC 6-18 points of ACC on mnist-5k and digits."""
    m = make_cdc()
    m.inst_proj = torch.nn.Identity()  # the test sets g_z's output v directly
    g = torch.Generator().manual_seed(0)
    b, d, k = 32, 16, 10
    # two views per image close together, images spread around a common direction: a trained
    # instance head's geometry, where z.z / tau_z between neighbours needs more than 8 bits
    base = torch.randn(d, generator=g) + 0.1 * torch.randn(b, d, generator=g)
    v = torch.cat([base + 0.02 * torch.randn(b, d, generator=g), base + 0.02 * torch.randn(b, d, generator=g)])
    v = v.bfloat16().requires_grad_()  # what a bf16 g_z hands over
    p = torch.softmax(3 * torch.randn(2 * b, k, generator=g, dtype=torch.float64), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m.instance(v)
        loss = cdc_contrastive_loss(p[:b].float(), z[:b], p[b:].float(), z[b:], 1.0, 0.5)
    loss.backward()  # outside autocast, as the trainer does
    ref_v = v.detach().double().requires_grad_()
    ref_z = ref_v / ref_v.pow(2).sum(1, keepdim=True).sqrt()
    ref_cdc_loss(p[:b], ref_z[:b], p[b:], ref_z[b:], 1.0, 0.5).backward()
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double(), ref_z.detach(), rtol=1e-6, atol=1e-6)
    assert v.grad is not None and ref_v.grad is not None
    # the gradient comes back in bf16: one rounding (2^-9 relative) of the float32 gradient
    err = float((v.grad.double() - ref_v.grad).norm() / ref_v.grad.norm())
    assert err < 4e-3, f"gradient w.r.t. g_z's output off by {err:.2%} under bf16 autocast"
