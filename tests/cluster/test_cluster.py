"""Tests of deepclust.cluster: k-means against scikit-learn and brute force, Sinkhorn against numpy."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from deepclust.cluster import KMeansResult, assign_to_centers, kmeans, sinkhorn
from deepclust.cluster.kmeans import _assign_pass, _full_sums, _lloyd, _move_changed, _relocate_empty
from deepclust.errors import DataError

# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------

BLOBS = [
    # n, d, k, std, center spread
    (1500, 8, 5, 1.0, 10.0),  # well separated
    (2000, 16, 10, 3.0, 10.0),  # overlapping
    (1200, 32, 3, 5.0, 6.0),  # heavily overlapping
    (2500, 4, 20, 0.5, 20.0),  # many clusters
]


def numpy_nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force squared distances in float64 (explicit differences)."""
    d = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d


@pytest.mark.parametrize("case", range(len(BLOBS)))
def test_kmeans_inertia_matches_sklearn(case):
    n, d, k, std, spread = BLOBS[case]
    x, _ = make_blobs(
        n_samples=n, n_features=d, centers=k, cluster_std=std, center_box=(-spread, spread), random_state=case
    )
    x = x + 100.0 * case  # data away from the origin
    n_init = 4
    sk = KMeans(n_clusters=k, n_init=n_init, init="k-means++", random_state=0).fit(x)
    res = kmeans(x, k, n_init=n_init, seed=0)
    assert isinstance(res, KMeansResult)
    assert res.labels.shape == (n,) and res.labels.dtype == torch.int64
    assert res.centers.shape == (k, d)
    # within 1% of scikit-learn's inertia (never much worse; better is fine)
    assert res.inertia <= sk.inertia_ * 1.01
    assert res.inertia >= sk.inertia_ * 0.97
    # the reported inertia is the inertia of the returned labels and centres
    c = res.centers.double().numpy()
    direct = ((x - c[res.labels.numpy()]) ** 2).sum()
    assert res.inertia == pytest.approx(direct, rel=1e-4)
    assert 1 <= res.n_iter <= 300


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_labels_are_nearest_centres(seed):
    x, _ = make_blobs(n_samples=1000, n_features=6, centers=7, cluster_std=2.0, random_state=seed)
    res = kmeans(x, 7, n_init=2, seed=seed)
    c = res.centers.double().numpy()
    nearest, d = numpy_nearest(x, c)
    lab = res.labels.numpy()
    mismatch = nearest != lab
    # any disagreement must be a numerical tie
    gap = d[np.arange(len(x)), lab] - d[np.arange(len(x)), nearest]
    assert np.all(gap[mismatch] <= 1e-4 * (1 + d[np.arange(len(x)), nearest][mismatch]))
    # centres are (close to) the means of their points: the Lloyd fixed point
    for j in range(7):
        pts = x[lab == j]
        assert len(pts) > 0
        assert np.abs(pts.mean(0) - c[j]).max() < 0.05 * x.std()


def test_kmeans_same_seed_same_result():
    x, _ = make_blobs(n_samples=1500, n_features=10, centers=8, cluster_std=4.0, random_state=3)
    a = kmeans(x, 8, n_init=3, seed=123)
    b = kmeans(x, 8, n_init=3, seed=123)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.centers, b.centers)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter


def test_kmeans_numpy_and_tensor_inputs():
    x, _ = make_blobs(n_samples=800, n_features=5, centers=4, random_state=1)
    x32 = x.astype(np.float32)
    r_np = kmeans(x32, 4, n_init=2, seed=5)
    r_t = kmeans(torch.from_numpy(x32), 4, n_init=2, seed=5)
    assert torch.equal(r_np.labels, r_t.labels)
    assert torch.equal(r_np.centers, r_t.centers)
    assert r_t.labels.device == r_t.centers.device == torch.device("cpu")
    r64 = kmeans(x, 4, n_init=2, seed=5)  # float64 input computed in float32
    assert r64.centers.dtype == torch.float32
    assert r64.inertia == pytest.approx(r_np.inertia, rel=1e-3)
    r_int = kmeans(np.round(x * 10).astype(np.int64), 4, n_init=2, seed=5)
    assert r_int.inertia > 0


def test_kmeans_chunked_equals_unchunked():
    x, _ = make_blobs(n_samples=1000, n_features=8, centers=6, cluster_std=1.5, random_state=2)
    full = kmeans(x, 6, n_init=2, seed=0)
    chunked = kmeans(x, 6, n_init=2, seed=0, chunk_size=37)
    assert chunked.inertia == pytest.approx(full.inertia, rel=1e-4)


def test_kmeans_one_cluster_and_n_clusters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * 5 + 20
    one = kmeans(x, 1, n_init=1)
    assert np.allclose(one.centers.double().numpy()[0], x.mean(0), atol=1e-4)
    assert one.inertia == pytest.approx(((x - x.mean(0)) ** 2).sum(), rel=1e-5)
    assert torch.all(one.labels == 0)
    every = kmeans(x, 50, n_init=1)  # every point its own cluster
    assert every.inertia == pytest.approx(0.0, abs=1e-6)
    assert len(torch.unique(every.labels)) == 50


def test_kmeanspp_seeding_spreads_centres():
    # three tight, far-apart blobs: D^2 seeding puts one seed in each blob, so a single Lloyd
    # step already gives the optimum. Uniform seeding would fail for most seeds (p = 2/9).
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    x = np.concatenate([m + rng.normal(scale=0.1, size=(200, 2)) for m in means])
    optimum = sum(((x[i * 200 : (i + 1) * 200] - x[i * 200 : (i + 1) * 200].mean(0)) ** 2).sum() for i in range(3))
    for seed in range(10):
        res = kmeans(x, 3, n_init=1, max_iter=1, seed=seed)
        assert res.inertia == pytest.approx(optimum, rel=1e-3)


def test_empty_clusters_take_farthest_points():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0], [0.5, 0.5]])
    centers = torch.tensor([[0.5, 0.5], [50.0, 50.0], [-50.0, -50.0]])
    labels = torch.zeros(5, dtype=torch.long)  # clusters 1 and 2 empty
    sums = x.double().sum(0, keepdim=True).repeat(3, 1) * torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    counts = torch.tensor([5, 0, 0])
    moved = _relocate_empty(x, centers, labels, sums, counts)
    # the two farthest points from centre 0 are (10, 10) and (0, 2); they found the empty clusters
    assert sorted(moved.tolist()) == [2, 3]
    assert sorted(labels[[2, 3]].tolist()) == [1, 2]
    assert labels[[0, 1, 4]].tolist() == [0, 0, 0]
    # sums and counts stay those of the labels
    for j in range(3):
        members = x[labels == j].double()
        assert counts[j] == len(members)
        assert torch.allclose(sums[j], members.sum(0))
    assert _relocate_empty(x, centers, labels, sums, counts) is None


def test_kmeans_more_clusters_than_distinct_points():
    # 5 distinct points, 6 clusters: two centres must coincide and a cluster goes empty; the
    # result must stay finite with the optimal inertia (0)
    base = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0], [9.0, 9.0]])
    x = np.repeat(base, 40, axis=0)
    res = kmeans(x, 6, n_init=2, seed=0)
    assert torch.isfinite(res.centers).all()
    assert res.inertia == pytest.approx(0.0, abs=1e-6)
    assert len(torch.unique(res.labels)) == 5


def test_kmeans_errors():
    x = np.random.default_rng(0).normal(size=(20, 3))
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(DataError, match="2 row"):
        kmeans(bad, 3)
    with pytest.raises(DataError):
        kmeans(x[:, 0], 3)  # 1-D
    with pytest.raises(DataError):
        kmeans(x, 21)  # more clusters than samples
    with pytest.raises(DataError):
        kmeans(x, 0)
    with pytest.raises(DataError):
        assign_to_centers(x, np.zeros((3, 4)))  # feature mismatch


@pytest.mark.parametrize("chunk_size", [None, 13])
def test_assign_to_centers_brute_force(chunk_size):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)) + 50.0
    c = rng.normal(size=(9, 5)) + 50.0
    labels, dist = assign_to_centers(torch.from_numpy(x), c, chunk_size=chunk_size)
    ref_lab, d = numpy_nearest(x, c)
    assert labels.dtype == torch.int64
    assert np.array_equal(labels.numpy(), ref_lab)
    assert np.allclose(dist.numpy(), d.min(1), rtol=1e-4, atol=1e-4)


def numpy_lloyd(x: np.ndarray, init: np.ndarray, max_iter: int, tol_abs: float):
    """Transcription of scikit-learn's ``_kmeans_single_lloyd`` (no empty clusters here):
    assign to C_t and average to C_{t+1}; stop on identical labels, or on a total squared
    shift <= tol (then re-assign to the final centres)."""
    centers = init.astype(np.float64)
    old = np.full(len(x), -1)
    strict = False
    for i in range(max_iter):  # noqa: B007 - the iteration count is returned after the loop
        labels, _ = numpy_nearest(x, centers)
        new = np.stack([x[labels == j].mean(0) for j in range(len(centers))])
        shift = ((new - centers) ** 2).sum()
        centers = new
        if np.array_equal(labels, old):
            strict = True
            break
        if shift <= tol_abs:
            break
        old = labels
    if not strict:
        labels, _ = numpy_nearest(x, centers)
    return labels, centers, i + 1


@pytest.mark.parametrize("tol_abs,max_iter", [(0.0, 300), (5e-2, 300), (0.0, 3)])
def test_lloyd_matches_sklearn_loop_transcription(tol_abs, max_iter):
    # from the same initial centres, every restart of the batched torch Lloyd follows the
    # reference loop: same labels, centres and iteration count (strict, tol and max_iter stops)
    x, _ = make_blobs(n_samples=600, n_features=4, centers=5, cluster_std=2.5, random_state=4)
    rng = np.random.default_rng(0)
    inits = np.stack([x[rng.choice(len(x), 5, replace=False)] for _ in range(3)])
    xt = torch.from_numpy(x).float()
    x_sq = (xt * xt).sum(1)
    results = _lloyd(xt, x_sq, torch.from_numpy(inits).float(), max_iter, tol_abs, None)
    for r, (labels, centers, inertia, n_iter) in enumerate(results):
        ref_labels, ref_centers, ref_iter = numpy_lloyd(x, inits[r], max_iter, tol_abs)
        assert n_iter == ref_iter
        assert np.array_equal(labels.numpy(), ref_labels)
        assert np.allclose(centers.double().numpy(), ref_centers, atol=1e-4)
        assert inertia == pytest.approx(((x - ref_centers[ref_labels]) ** 2).sum(), rel=1e-4)


def test_cluster_sums_paths_agree(monkeypatch):
    # the CPU one-hot matmul and the index_add_ path (many centres, and the GPU) give the same sums
    x, _ = make_blobs(n_samples=700, n_features=6, centers=4, random_state=5)
    xt = torch.from_numpy(x).float()
    x_sq = (xt * xt).sum(1)
    centers = xt[torch.randperm(700, generator=torch.Generator().manual_seed(0))[:12]].view(3, 4, 6)
    onehot = _assign_pass(xt, x_sq, centers, 97, with_sums=True)
    monkeypatch.setattr(importlib.import_module("deepclust.cluster.kmeans"), "_ONEHOT_COLUMNS", 0)
    scatter = _assign_pass(xt, x_sq, centers, 97, with_sums=True)
    assert torch.equal(onehot.labels, scatter.labels)
    assert torch.equal(onehot.counts, scatter.counts)
    torch.testing.assert_close(onehot.sums, scatter.sums, rtol=1e-6, atol=1e-4)
    for j in range(3):  # and both equal the direct per-cluster sums
        lab = onehot.labels[j].numpy()
        for c in range(4):
            assert np.allclose(onehot.sums[j, c].numpy(), x[lab == c].sum(0), rtol=1e-5, atol=1e-3)
            assert int(onehot.counts[j, c]) == int((lab == c).sum())


@pytest.mark.parametrize("onehot_columns", [256, 0])
def test_incremental_sums_follow_moved_points(monkeypatch, onehot_columns):
    # sums updated from the moved points only equal the sums recomputed from scratch
    monkeypatch.setattr(importlib.import_module("deepclust.cluster.kmeans"), "_ONEHOT_COLUMNS", onehot_columns)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(500, 5))).float()
    prev = torch.from_numpy(rng.integers(0, 6, size=(2, 500)))
    labels = prev.clone()
    moved = torch.from_numpy(rng.random((2, 500)) < 0.1)
    labels[moved] = torch.from_numpy(rng.integers(0, 6, size=int(moved.sum())))
    sums, counts = _full_sums(x, prev, 6, None)
    _move_changed(x, prev, labels, labels != prev, sums, counts)
    for j in range(2):
        for c in range(6):
            members = x.double().numpy()[labels[j].numpy() == c]
            assert int(counts[j, c]) == len(members)
            assert np.allclose(sums[j, c].numpy(), members.sum(0), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_follows_cuda_device():
    x, _ = make_blobs(n_samples=2000, n_features=16, centers=5, random_state=0)
    xt = torch.from_numpy(x).float().cuda()
    res = kmeans(xt, 5, n_init=3, seed=0)
    assert res.labels.is_cuda and res.centers.is_cuda
    cpu = kmeans(x, 5, n_init=3, seed=0)
    assert res.inertia == pytest.approx(cpu.inertia, rel=1e-2)
    q = sinkhorn(torch.randn(64, 10, device="cuda"))
    assert q.is_cuda and q.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Sinkhorn
# --------------------------------------------------------------------------------------------


def numpy_sinkhorn(scores: np.ndarray, n_iters: int, epsilon: float) -> np.ndarray:
    """Direct transcription of the SwAV alternating normalisation."""
    q = np.exp(scores.astype(np.float64) / epsilon)
    q /= q.sum()
    b, k = q.shape
    for _ in range(n_iters):
        q /= q.sum(axis=0, keepdims=True)
        q /= k
        q /= q.sum(axis=1, keepdims=True)
        q /= b
    return q * b


@pytest.mark.parametrize("b,k,n_iters,eps", [(64, 10, 3, 0.05), (17, 40, 1, 0.1), (256, 7, 10, 0.05), (5, 3, 0, 0.5)])
def test_sinkhorn_matches_numpy(b, k, n_iters, eps):
    torch.manual_seed(b * k)
    scores = torch.nn.functional.normalize(torch.randn(b, k), dim=1) * 0.5
    q = sinkhorn(scores, n_iters=n_iters, epsilon=eps)
    ref = numpy_sinkhorn(scores.double().numpy(), max(n_iters, 0), eps)
    if n_iters == 0:
        ref = ref / ref.sum(axis=1, keepdims=True)
    assert q.shape == (b, k) and q.dtype == torch.float32
    assert np.allclose(q.numpy(), ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-5)


def test_sinkhorn_columns_approach_equipartition():
    torch.manual_seed(0)
    b, k = 128, 16
    scores = torch.randn(b, k) * 0.2 + torch.linspace(0, 0.3, k)  # biased towards last clusters
    errs = []
    for n in [1, 2, 3, 5, 10, 30, 100]:
        q = sinkhorn(scores, n_iters=n, epsilon=0.05)
        assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-5)
        errs.append(float((q.sum(0) - b / k).abs().max()))
    assert all(e2 <= e1 * 1.0001 + 1e-6 for e1, e2 in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 1e-3 * b / k < errs[0]


def test_sinkhorn_no_grad_large_scores_and_autocast():
    scores = (torch.randn(32, 8) * 50).requires_grad_(True)  # exp(scores / eps) overflows naively
    q = sinkhorn(scores, n_iters=3, epsilon=0.05)
    assert not q.requires_grad
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(1), torch.ones(32), atol=1e-5)
    base = torch.randn(32, 8) * 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qa = sinkhorn(base, n_iters=3)
    assert qa.dtype == torch.float32
    assert torch.allclose(qa, sinkhorn(base, n_iters=3))
    q16 = sinkhorn(base.to(torch.bfloat16), n_iters=3)
    assert q16.dtype == torch.float32
    assert torch.allclose(q16.sum(1), torch.ones(32), atol=1e-5)
