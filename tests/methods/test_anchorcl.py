"""AnchorCL: losses against loop-based transcriptions of spec/anchor.md section 3 (values and
gradients), and the method's centre initialisation, training step and evaluation extras."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from deepclust.cluster import kmeans
from deepclust.config import resolve_config
from deepclust.losses.contrastive import nt_xent_loss
from deepclust.losses.dec import anchor_loss, dec_loss, dec_target, student_t_assignment
from deepclust.methods import DataInfo, create_method

D64 = torch.float64


# ----- transcriptions of the formulas, one scalar at a time ----------------------------------
def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/2B) sum_a [-S_a,pos(a) + log sum_{b != a} exp(S_ab)], S built entry by entry."""
    b = z1.shape[0]
    u = [z1[i] / torch.sqrt((z1[i] ** 2).sum()) for i in range(b)] + [
        z2[i] / torch.sqrt((z2[i] ** 2).sum()) for i in range(b)
    ]
    n = 2 * b
    s = [[torch.dot(u[a], u[c]) / tau for c in range(n)] for a in range(n)]
    total = 0.0
    for a in range(n):
        pos = a + b if a < b else a - b
        den = 0.0
        for c in range(n):
            if c != a:
                den = den + torch.exp(s[a][c])
        total = total - s[a][pos] + torch.log(den)
    return total / n


def ref_student_t(h: torch.Tensor, mu: torch.Tensor, alpha: float) -> torch.Tensor:
    rows = []
    for n in range(h.shape[0]):
        ker = [(1 + ((h[n] - mu[k]) ** 2).sum() / alpha) ** (-(alpha + 1) / 2) for k in range(mu.shape[0])]
        tot = sum(ker)
        rows.append(torch.stack([v / tot for v in ker]))
    return torch.stack(rows)


def ref_dec_target(q: torch.Tensor) -> torch.Tensor:
    b, k = q.shape
    f = [sum(q[n, j] for n in range(b)) + 1e-9 for j in range(k)]
    p = torch.empty(b, k, dtype=q.dtype)
    for n in range(b):
        w = [q[n, j] ** 2 / f[j] for j in range(k)]
        for j in range(k):
            p[n, j] = w[j] / sum(w)
    return p


def ref_dec_loss(q: torch.Tensor) -> torch.Tensor:
    p = ref_dec_target(q.detach())  # the target is a constant
    b, k = q.shape
    total = 0.0
    for n in range(b):
        for j in range(k):
            if p[n, j] > 0:
                total = total + p[n, j] * (torch.log(p[n, j]) - torch.log(q[n, j] + 1e-8))
    return total / b


def ref_anchor_loss(qa: torch.Tensor, qv: torch.Tensor) -> torch.Tensor:
    b, k = qa.shape
    total = 0.0
    for n in range(b):
        for j in range(k):
            total = total + qa[n, j] * (math.log(qa[n, j].item() + 1e-8) - torch.log(qv[n, j] + 1e-8))
    return total / b


def random_q(b: int, k: int, seed: int, sharp: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(b, k, generator=g, dtype=D64), dim=1)


# ----- NT-Xent ---------------------------------------------------------------------------------
@pytest.mark.parametrize("b,d,tau", [(4, 6, 0.5), (7, 3, 0.5), (5, 8, 0.1), (1, 4, 1.0)])
def test_nt_xent_against_loops(b: int, d: int, tau: float) -> None:
    g = torch.Generator().manual_seed(b * 100 + d)
    z1 = (3 * torch.randn(b, d, generator=g, dtype=D64)).requires_grad_()  # not normalised: done inside
    z2 = torch.randn(b, d, generator=g, dtype=D64).requires_grad_()
    r1, r2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    ours = nt_xent_loss(z1, z2, tau)
    ref = ref_nt_xent(r1, r2, tau)
    assert ours.dim() == 0
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(z1.grad, r1.grad)
    torch.testing.assert_close(z2.grad, r2.grad)


def test_nt_xent_against_cross_entropy_form() -> None:
    """Second transcription: row a is a (2B-1)-way classification of its positive."""
    g = torch.Generator().manual_seed(3)
    b, tau = 6, 0.5
    z1, z2 = torch.randn(b, 5, generator=g, dtype=D64), torch.randn(b, 5, generator=g, dtype=D64)
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for a in range(2 * b):
        others = [c for c in range(2 * b) if c != a]
        logits = torch.stack([u[a] @ u[c] / tau for c in others])
        pos = others.index(a + b if a < b else a - b)
        total += -torch.log_softmax(logits, 0)[pos].item()
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(total / (2 * b), rel=1e-10)


def test_nt_xent_random_unit_vectors_about_log_2b_minus_1() -> None:
    torch.manual_seed(0)
    b = 128
    loss = nt_xent_loss(torch.randn(b, 4096), torch.randn(b, 4096), 0.5)
    assert loss.item() == pytest.approx(math.log(2 * b - 1), abs=0.02)


def test_nt_xent_aligned_views_floor() -> None:
    """Positives identical, negatives orthogonal: -2 + log(e^2 + 2B - 2) (spec/anchor.md 9)."""
    b = 16
    z = torch.eye(b, 32, dtype=D64)
    assert nt_xent_loss(z, z, 0.5).item() == pytest.approx(-2 + math.log(math.exp(2) + 2 * b - 2), rel=1e-10)


# ----- Student-t assignment -----------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5])
def test_student_t_against_loops(alpha: float) -> None:
    g = torch.Generator().manual_seed(int(alpha * 10))
    h = (4 * torch.randn(9, 5, generator=g, dtype=D64)).requires_grad_()
    mu = (4 * torch.randn(4, 5, generator=g, dtype=D64)).requires_grad_()
    rh, rmu = h.detach().clone().requires_grad_(), mu.detach().clone().requires_grad_()
    q = student_t_assignment(h, mu, alpha)
    ref = ref_student_t(rh, rmu, alpha)
    torch.testing.assert_close(q, ref)
    torch.testing.assert_close(q.sum(1), torch.ones(9, dtype=D64))
    w = torch.randn(9, 4, generator=g, dtype=D64)  # a generic linear functional of q
    (q * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(h.grad, rh.grad)
    torch.testing.assert_close(mu.grad, rmu.grad)


def test_student_t_far_centres_do_not_underflow() -> None:
    h = torch.zeros(2, 3)
    mu = torch.tensor([[1e4, 0.0, 0.0], [2e4, 0.0, 0.0]])
    q = student_t_assignment(h, mu, alpha=1.0)
    # q ~ 1/d^2: 1/1e8 against 1/4e8 -> 0.8 / 0.2
    torch.testing.assert_close(q, torch.tensor([[0.8, 0.2], [0.8, 0.2]]), rtol=1e-4, atol=1e-6)


# ----- DEC target and loss ---------------------------------------------------------------------
@pytest.mark.parametrize("b,k,seed", [(8, 3, 0), (5, 7, 1), (16, 10, 2)])
def test_dec_target_against_loops(b: int, k: int, seed: int) -> None:
    q = random_q(b, k, seed).requires_grad_()
    p = dec_target(q)
    torch.testing.assert_close(p, ref_dec_target(q.detach()))
    torch.testing.assert_close(p.sum(1), torch.ones(b, dtype=D64))
    assert not p.requires_grad  # held constant


def test_dec_target_sharpens_and_balances() -> None:
    q = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.1, 0.9]], dtype=D64)
    p = dec_target(q)
    assert p[3, 1] > q[3, 1]  # squaring sharpens a confident row
    assert p[0, 0] > q[0, 0]  # and the larger entry of a soft row
    # Balance: dividing by the soft frequency f_k moves an undecided row towards the smaller
    # cluster. Three rows favour cluster 0 (f = (3.2, 0.8)), the fourth is 50/50: squaring alone
    # would keep it at 0.5, the frequency gives (0.25/0.8) / (0.25/3.2 + 0.25/0.8) = 0.8.
    q = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.5, 0.5]], dtype=D64)
    p = dec_target(q)
    assert float(p[3, 1]) == pytest.approx(0.8, rel=1e-8)
    # and over a batch the target's cluster masses are more even than q's
    q = random_q(64, 4, 11) * torch.tensor([4.0, 1.0, 1.0, 1.0], dtype=D64)
    q = q / q.sum(1, keepdim=True)
    assert float(dec_target(q).sum(0).std()) < float(q.sum(0).std())


@pytest.mark.parametrize("b,k,seed", [(8, 3, 0), (6, 5, 4), (12, 10, 5)])
def test_dec_loss_against_loops(b: int, k: int, seed: int) -> None:
    q = random_q(b, k, seed).requires_grad_()
    rq = q.detach().clone().requires_grad_()
    ours, ref = dec_loss(q), ref_dec_loss(rq)
    assert ours.dim() == 0
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(q.grad, rq.grad)
    # No gradient through the target: with P differentiated too, the gradient would differ.
    wq = q.detach().clone().requires_grad_()
    b_, k_ = wq.shape
    w = wq.pow(2) / (wq.sum(0, keepdim=True) + 1e-9)
    p = w / w.sum(1, keepdim=True)
    (torch.xlogy(p, p) - p * torch.log(wq + 1e-8)).sum(1).mean().backward()
    assert not torch.allclose(wq.grad, q.grad)


def test_dec_loss_nonnegative_and_zero_for_uniform_q() -> None:
    assert dec_loss(torch.full((6, 4), 0.25, dtype=D64)).item() == pytest.approx(0.0, abs=1e-7)
    assert dec_loss(random_q(10, 4, 7)).item() >= 0


# ----- anchor loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("b,k,seed", [(8, 3, 0), (5, 6, 3), (10, 10, 9)])
def test_anchor_loss_against_loops(b: int, k: int, seed: int) -> None:
    qa = random_q(b, k, seed).requires_grad_()
    qv = random_q(b, k, seed + 100).requires_grad_()
    rqv = qv.detach().clone().requires_grad_()
    ours, ref = anchor_loss(qa, qv), ref_anchor_loss(qa.detach(), rqv)
    assert ours.dim() == 0
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(qv.grad, rqv.grad)
    assert qa.grad is None  # the anchor is held constant


def test_anchor_loss_zero_for_identical_and_positive_otherwise() -> None:
    q = random_q(7, 4, 11)
    assert anchor_loss(q, q.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert anchor_loss(q, random_q(7, 4, 12)).item() > 0


# ----- the method --------------------------------------------------------------------------------
def make_anchorcl(n_clusters: int = 4, seed: int = 0, **args):
    cfg = resolve_config(
        {
            "method": "anchorcl",
            "model": {"backbone": "small_cnn", "feature_dim": 16},
            "train": {"seed": seed},
            "method_args": args,
        }
    )
    info = DataInfo(n_samples=60, n_channels=1, image_size=8, mean=[0.5], std=[0.25], n_clusters=n_clusters)
    return create_method(cfg, info)


def images(n: int = 60, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_centre_initialisation_is_kmeans_on_initial_features() -> None:
    torch.manual_seed(0)
    method = make_anchorcl(n_clusters=5, seed=3)
    x = images()
    bn_before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    feats = method.initial_features(x)
    method.setup(x)
    mu = method.centers.detach().double()
    assert mu.shape == (5, method.backbone.out_dim)  # K from the config, not 10
    # k-means on those features, checked without the library's k-means: the centres are a
    # Lloyd fixed point (each the mean of the features nearest it) and their inertia is as
    # good as scikit-learn's KMeans with the spec's n_init = 10.
    from sklearn.cluster import KMeans

    f = feats.double()
    nearest = torch.cdist(f, mu).argmin(1)
    assert len(set(nearest.tolist())) == 5
    for j in range(5):
        torch.testing.assert_close(mu[j], f[nearest == j].mean(0), rtol=1e-4, atol=1e-5)
    inertia = float(((f - mu[nearest]) ** 2).sum())
    ref = KMeans(5, n_init=10, random_state=0).fit(f.numpy())
    assert inertia <= 1.02 * ref.inertia_
    # the feature pass leaves the backbone (incl. BN running statistics) untouched
    for k, v in method.backbone.state_dict().items():
        torch.testing.assert_close(v, bn_before[k])


def test_initial_features_are_clean_view_backbone_outputs() -> None:
    x = images()
    # One batch holding everything, train-mode BN: exactly backbone(clean view) in train mode.
    m = make_anchorcl(init_batch_size=100)
    m.backbone.train()
    with torch.no_grad():
        direct = m.backbone(x.float() / 255.0)  # no mean/std normalisation (spec/anchor.md 5)
    torch.testing.assert_close(m.initial_features(x), direct, rtol=1e-5, atol=1e-5)
    # Eval-mode BN: independent of the batching.
    m = make_anchorcl(init_bn_mode="eval", init_batch_size=7)
    m.backbone.eval()
    with torch.no_grad():
        direct = m.backbone(x.float() / 255.0)
    torch.testing.assert_close(m.initial_features(x), direct, rtol=1e-5, atol=1e-5)


def test_same_seed_gives_same_centres() -> None:
    x = images()
    torch.manual_seed(0)
    a = make_anchorcl(seed=0)
    torch.manual_seed(0)
    b = make_anchorcl(seed=0)
    a.setup(x)
    b.setup(x)
    torch.testing.assert_close(a.centers, b.centers)  # same seed, same network -> same centres


def test_training_step_matches_transcription_and_gradients() -> None:
    torch.manual_seed(1)
    method = make_anchorcl()
    x = images(16)
    method.setup(images())
    method.train()
    state = torch.get_rng_state()
    out = method.training_step(x, torch.arange(16), epoch=0)
    # Same augmentation draws, the loss assembled by hand from spec/anchor.md 3.6.
    torch.set_rng_state(state)
    clean = x.float() / 255.0
    xi, xj = method.augment(x), method.augment(x)
    f = method.backbone
    h, hi, hj = f(clean), f(xi), f(xj)
    g = method.projector
    mu = method.centers
    q, qi, qj = (ref_student_t(t.double(), mu.double(), 1.0) for t in (h, hi, hj))
    ref = (
        ref_nt_xent(g(hi).double(), g(hj).double(), 0.5)
        + ref_dec_loss(q)
        + ref_anchor_loss(q.detach(), qi)
        + ref_anchor_loss(q.detach(), qj)
    )
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)
    out.loss.backward()
    assert method.centers.grad is not None and method.centers.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.projector.parameters())


def test_anchor_term_sends_no_gradient_to_the_clean_view() -> None:
    method = make_anchorcl()
    method.setup(images())
    h = torch.randn(8, method.backbone.out_dim, requires_grad=True)
    hv = torch.randn(8, method.backbone.out_dim, requires_grad=True)
    anchor_loss(method._assign(h), method._assign(hv)).backward()
    assert h.grad is None or h.grad.abs().sum() == 0
    assert hv.grad.abs().sum() > 0


def test_infer_and_kmeans_extra() -> None:
    method = make_anchorcl(n_clusters=3)
    method.setup(images())
    method.eval()
    x = method.eval_transform(images(20))
    feats, q = method.infer(x)
    assert feats.shape == (20, method.backbone.out_dim) and q.shape == (20, 3)
    torch.testing.assert_close(q.sum(1), torch.ones(20))
    # h is the raw, un-normalised backbone output (spec/anchor.md 7, 9), and q its Student-t
    # assignment: normalising h would change both
    with torch.no_grad():
        h = method.backbone(x)
    torch.testing.assert_close(feats, h)
    assert (feats.norm(dim=1) - 1).abs().min() > 0.1
    torch.testing.assert_close(
        q.double(), ref_student_t(h.double(), method.centers.detach().double(), 1.0), rtol=1e-5, atol=1e-6
    )
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(0))
    extra = method.evaluation_extras(feats, y)["kmeans"]
    assert extra["features"] == "backbone h, clean" and extra["n_init"] == method.cfg.eval.n_init
    from deepclust.metrics import evaluate as scores_of

    ref = scores_of(
        y.numpy(),
        kmeans(h, 3, n_init=method.cfg.eval.n_init, seed=method.cfg.eval.kmeans_seed).labels.numpy(),
        extra=True,
    )
    assert {k: extra[k] for k in ("acc", "nmi", "ari", "ami")} == {k: ref[k] for k in ("acc", "nmi", "ari", "ami")}
    assert "acc" not in method.evaluation_extras(feats, None)["kmeans"]


def test_training_before_setup_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        make_anchorcl().training_step(images(4), torch.arange(4), 0)


def test_defaults_are_the_papers() -> None:
    cfg = make_anchorcl().cfg
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("adam", 3e-4, 0.0, "constant")
    assert cfg.augment.crop_scale == (0.08, 1.0) and cfg.augment.jitter_p == 0.8


def test_full_dataset_dec_target() -> None:
    """target_mode "full" (spec/anchor.md 10.9, classic DEC): P from the q of all N training
    images (f_k summed over the dataset), read by index, refreshed every target_interval steps;
    the store keeps each image's latest clean-view q."""
    torch.manual_seed(2)
    method = make_anchorcl(target_mode="full", target_interval=2)
    x = images()
    method.setup(x)
    feats = method.initial_features(x)
    q0 = ref_student_t(feats.double(), method.centers.detach().double(), 1.0)
    torch.testing.assert_close(method.q_store.double(), q0, rtol=1e-5, atol=1e-7)
    target0 = ref_dec_target(method.q_store.double())  # the frequencies of all 60 images
    torch.testing.assert_close(method.full_target.double(), target0, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(target0[:16], ref_dec_target(q0[:16]))  # not the batch's target
    method.train()
    idx = torch.arange(10, 26)
    state = torch.get_rng_state()
    out = method.training_step(x[idx], idx, epoch=0)
    torch.set_rng_state(state)
    clean = x[idx].float() / 255.0
    xi, xj = method.augment(x[idx]), method.augment(x[idx])
    f, g, mu = method.backbone, method.projector, method.centers.double()
    h, hi, hj = f(clean), f(xi), f(xj)
    q, qi, qj = (ref_student_t(t.double(), mu, 1.0) for t in (h, hi, hj))
    p = target0[idx]
    l_clu = (p * (torch.log(p) - torch.log(q + 1e-8))).sum(1).mean()
    ref = (
        ref_nt_xent(g(hi).double(), g(hj).double(), 0.5)
        + l_clu
        + ref_anchor_loss(q.detach(), qi)
        + ref_anchor_loss(q.detach(), qj)
    )
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)
    torch.testing.assert_close(method.q_store[idx].double(), q.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(method.full_target.double(), target0, rtol=1e-5, atol=1e-7)  # not yet refreshed
    method.training_step(x[:16], torch.arange(16), epoch=0)  # step 2
    torch.testing.assert_close(method.full_target.double(), target0, rtol=1e-5, atol=1e-7)
    stored = method.q_store.double().clone()
    method.training_step(x[:16], torch.arange(16), epoch=0)  # step 3: refreshed from the store first
    torch.testing.assert_close(method.full_target.double(), ref_dec_target(stored), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(method.full_target.double(), target0)
    assert method.full_target.shape == (60, 4) and "full_target" in method.state_dict()


def test_kmeans_extra_is_a_curve_in_metrics_and_ami_is_recorded(tmp_path) -> None:
    """Both predictions at every evaluation (spec/anchor.md 7): each evaluation line of
    metrics.jsonl keeps extras.kmeans; AMI sits beside ACC/NMI/ARI, checked with scikit-learn."""
    import json

    import numpy as np
    from sklearn.metrics import adjusted_mutual_info_score

    from deepclust.engine import io
    from deepclust.engine.trainer import Trainer

    out = tmp_path / "run"
    cfg = resolve_config(
        {
            "method": "anchorcl",
            "n_clusters": 10,
            "data": {"name": "digits", "image_size": 8},
            "model": {"backbone": "small_cnn", "feature_dim": 16, "width": 8},
            "train": {
                "epochs": 2,
                "batch_size": 512,
                "eval_every": 1,
                "out": str(out),
                "device": "cpu",
                "progress": False,
            },
            "eval": {"n_init": 2},
        }
    )
    trainer = Trainer(cfg)
    record = trainer.fit()
    lines = [json.loads(line) for line in (out / io.METRICS).read_text().splitlines()]
    evals = [line for line in lines if "acc" in line]
    assert [line["epoch"] for line in evals] == [1, 2]
    for line in evals:
        km = line["extras"]["kmeans"]
        assert {"acc", "nmi", "ari", "ami"} <= set(km) and "ami" in line
    saved = json.loads((out / io.RESULTS).read_text())
    labels = trainer.prediction.labels.numpy()
    y = trainer.eval_data.labels.numpy()
    assert saved["ami"] == pytest.approx(adjusted_mutual_info_score(y, labels, average_method="arithmetic"), abs=1e-12)
    assert saved["metrics"]["ami"] == saved["ami"] == record["ami"] and np.isfinite(saved["extras"]["kmeans"]["ami"])


def test_instance_warmup_trains_the_instance_loss_alone_then_reinitialises_the_centres() -> None:
    """instance_warmup w (library choice): epochs < int(w * epochs) train NT-Xent alone (no
    gradient reaches the centres); at the start of that epoch the centres are k-means of the
    then-current network's features, computed as setup does."""
    torch.manual_seed(3)
    method = create_method(
        resolve_config(
            {
                "method": "anchorcl",
                "model": {"backbone": "small_cnn", "feature_dim": 16},
                "train": {"seed": 0, "epochs": 8},
                "method_args": {"instance_warmup": 0.25},
            }
        ),
        DataInfo(n_samples=60, n_channels=1, image_size=8, mean=[0.5], std=[0.25], n_clusters=4),
    )
    x = images()
    method.bind_data(x)
    method.setup(x)
    assert method.cluster_start == 2
    method.train()
    state = torch.get_rng_state()
    out = method.training_step(x[:16], torch.arange(16), epoch=1)
    torch.set_rng_state(state)
    _ = method.eval_transform(x[:16])
    xi, xj = method.augment(x[:16]), method.augment(x[:16])
    g, f = method.projector, method.backbone
    ref = ref_nt_xent(g(f(xi)).double(), g(f(xj)).double(), 0.5)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)
    out.loss.backward()
    assert method.centers.grad is None or float(method.centers.grad.abs().sum()) == 0.0
    # change the network, then the epoch-2 start re-initialises from its features
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = method.centers.detach().clone()
    method.on_epoch_start(1)
    torch.testing.assert_close(method.centers.detach(), before)  # not yet
    method.on_epoch_start(2)
    feats = method.initial_features(x)
    km = kmeans(feats, 4, n_init=method.opts.init_n_init, seed=0)
    torch.testing.assert_close(method.centers.detach(), km.centers.to(method.centers.dtype))
    assert not torch.allclose(method.centers.detach(), before)


def test_instance_warmup_out_of_range() -> None:
    with pytest.raises(Exception, match="instance_warmup"):
        make_anchorcl(instance_warmup=1.0)


@pytest.mark.slow
def test_instance_warmup_resumes_exactly(tmp_path, interrupt_in_epoch) -> None:
    """The re-initialisation at the warm-up's end reads the training images again, on a
    resumed run too (the trainer's bind_data): a run stopped at the end of the warm-up and
    resumed ends with the weights of a straight one."""
    from deepclust.engine import io, train
    from deepclust.errors import DeepClustError

    def cfg(out):
        return resolve_config(
            {
                "method": "anchorcl",
                "data": {"name": "digits", "image_size": 8},
                "model": {"backbone": "small_cnn", "feature_dim": 16, "width": 8},
                "train": {
                    "epochs": 2,
                    "batch_size": 256,
                    "out": str(out),
                    "device": "cpu",
                    "progress": False,
                    "checkpoint_every": 5,
                },
                "eval": {"n_init": 1},
                "method_args": {"instance_warmup": 0.5, "init_n_init": 1},
            }
        )

    straight, split = tmp_path / "a", tmp_path / "b"
    train(cfg(straight))
    undo = interrupt_in_epoch(1)
    with pytest.raises(DeepClustError, match="checkpoint of epoch 1"):
        train(cfg(split))
    undo()
    train(cfg(split), resume=True)
    a, b = io.load_checkpoint(straight)["model"], io.load_checkpoint(split)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
