"""Tests of deepclust.metrics against brute force, direct transcriptions and scikit-learn."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)

from deepclust.errors import DataError
from deepclust.metrics import (
    acc_many_to_one,
    ami,
    ari,
    cluster_accuracy,
    cluster_size_stats,
    contingency_matrix,
    evaluate,
    match_clusters,
    matched_confusion,
    nmi,
)

# --------------------------------------------------------------------------------------------
# independent references (pure Python loops over samples)
# --------------------------------------------------------------------------------------------


def loop_table(y_true, y_pred) -> dict:
    """{(cluster, class): count}, by a loop over samples."""
    table: dict = {}
    for t, p in zip(list(y_true), list(y_pred), strict=True):
        table[(p, t)] = table.get((p, t), 0) + 1
    return table


def brute_force_acc(y_true, y_pred) -> float:
    """Max over all injective maps between clusters and classes, enumerated with itertools."""
    table = loop_table(y_true, y_pred)
    clusters = sorted(set(y_pred), key=repr)
    classes = sorted(set(y_true), key=repr)
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            best = max(best, sum(table.get((k, c), 0) for k, c in zip(clusters, image, strict=True)))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            best = max(best, sum(table.get((k, c), 0) for k, c in zip(image, classes, strict=True)))
    return best / len(y_true)


def majority_vote_acc(y_true, y_pred) -> float:
    """(1/n) sum over clusters of the count of the cluster's most frequent class."""
    members: dict = {}
    for t, p in zip(list(y_true), list(y_pred), strict=True):
        members.setdefault(p, []).append(t)
    return sum(Counter(v).most_common(1)[0][1] for v in members.values()) / len(y_true)


def relabel(values, kind: str, rng):
    """Map integer ids to another label space: non-contiguous ints, strings, or unchanged."""
    values = np.asarray(values)
    uniq = np.unique(values)
    if kind == "int":
        return values
    if kind == "sparse":  # non-contiguous, shuffled, some negative (but never -1)
        codes = rng.choice(np.arange(2, 10_000), size=len(uniq), replace=False) * rng.choice([-1, 1], len(uniq))
        return codes[np.searchsorted(uniq, values)]
    if kind == "str":
        names = np.array([f"c{int(v) * 37 % 101}_{int(v)}" for v in uniq])
        return names[np.searchsorted(uniq, values)]
    raise AssertionError(kind)


def random_labels(rng, n, K, L, noise=0.5):
    """Random true labels in L classes and predictions in K clusters correlated with them."""
    y_true = rng.integers(0, L, n)
    y_pred = rng.integers(0, K, n)
    keep = rng.random(n) > noise
    y_pred[keep] = (y_true[keep] * 7 + 3) % K
    return y_true, y_pred


# --------------------------------------------------------------------------------------------
# ACC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind_true,kind_pred", [("int", "int"), ("sparse", "str"), ("str", "sparse")])
def test_acc_matches_brute_force(seed, kind_true, kind_pred):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    K = int(rng.integers(1, 6))
    L = int(rng.integers(1, 6))
    y_true, y_pred = random_labels(rng, n, K, L, noise=rng.random())
    y_true = relabel(y_true, kind_true, rng)
    y_pred = relabel(y_pred, kind_pred, rng)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force_acc(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("K,L", [(2, 5), (5, 2), (6, 3), (3, 6), (1, 4), (4, 1)])
def test_acc_rectangular_brute_force(K, L):
    rng = np.random.default_rng(K * 10 + L)
    for _ in range(5):
        y_true, y_pred = random_labels(rng, 40, K, L, noise=0.3)
        assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force_acc(y_true, y_pred), abs=1e-12)


def test_acc_more_clusters_counts_unmatched_as_errors():
    # 3 classes, 6 clusters, every cluster pure: only 3 clusters can be matched
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 2, 3, 4, 5]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(3 / 6)
    assert acc_many_to_one(y_true, y_pred) == pytest.approx(1.0)
    # a single cluster against three classes
    assert cluster_accuracy(y_true, [9] * 6) == pytest.approx(2 / 6)


@pytest.mark.parametrize("seed", range(3))
def test_acc_against_lsa_on_loop_built_matrix(seed):
    rng = np.random.default_rng(100 + seed)
    K, L, n = [(40, 30), (25, 60), (50, 50)][seed] + (4000,)
    y_true, y_pred = random_labels(rng, n, K, L, noise=0.6)
    y_true = relabel(y_true, "sparse", rng)
    y_pred = relabel(y_pred, "str", rng)
    table = loop_table(y_true, y_pred)
    clusters = sorted(set(y_pred.tolist()))
    classes = sorted(set(y_true.tolist()))
    C = np.zeros((len(clusters), len(classes)))
    for (k, c), v in table.items():
        C[clusters.index(k), classes.index(c)] = v
    r, c = linear_sum_assignment(-C)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(C[r, c].sum() / n, abs=1e-12)


@pytest.mark.parametrize("kind", ["int", "sparse", "str"])
def test_acc_is_one_for_relabelled_copy(kind):
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 12, 500)
    perm = rng.permutation(12) + 1000
    y_pred = relabel(perm[y_true], kind, rng)
    assert cluster_accuracy(y_true, y_pred) == 1.0
    assert nmi(y_true, y_pred) == pytest.approx(1.0)
    assert ari(y_true, y_pred) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_acc_invariant_to_permuting_cluster_ids(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = random_labels(rng, 300, 8, 6, noise=0.5)
    perm = rng.permutation(8)
    for f in (cluster_accuracy, nmi, ari, acc_many_to_one):
        assert f(y_true, perm[y_pred]) == pytest.approx(f(y_true, y_pred), abs=1e-12)


def test_acc_speed_1000_clusters_200k_samples():
    rng = np.random.default_rng(0)
    n, K = 200_000, 1000
    y_true = rng.integers(0, K, n)
    perm = rng.permutation(K)
    y_pred = perm[y_true].copy()
    noisy = rng.random(n) < 0.4
    y_pred[noisy] = rng.integers(0, K, int(noisy.sum()))
    t0 = time.perf_counter()
    acc = cluster_accuracy(y_true, y_pred)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"cluster_accuracy took {elapsed:.1f}s"
    # the true permutation is (almost surely) optimal here: ~60% + 40%/K correct
    expected = float(np.mean(y_pred == perm[y_true]))
    assert acc == pytest.approx(expected, abs=2e-3)
    assert acc >= expected


# --------------------------------------------------------------------------------------------
# contingency, matching, confusion
# --------------------------------------------------------------------------------------------


def test_contingency_matrix_matches_loop():
    rng = np.random.default_rng(3)
    y_true = relabel(rng.integers(0, 5, 300), "str", rng)
    y_pred = relabel(rng.integers(0, 7, 300), "sparse", rng)
    C, classes, clusters = contingency_matrix(y_true, y_pred)
    assert C.shape == (len(set(y_pred.tolist())), len(set(y_true.tolist())))
    table = loop_table(y_true, y_pred)
    for i, k in enumerate(clusters):
        for j, c in enumerate(classes):
            assert C[i, j] == table.get((k, c), 0)


@pytest.mark.parametrize("K,L", [(5, 5), (8, 4), (3, 7)])
def test_match_clusters_and_confusion(K, L):
    rng = np.random.default_rng(K + 100 * L)
    y_true, y_pred = random_labels(rng, 400, K, L, noise=0.4)
    y_true = relabel(y_true, "str", rng)
    mapping = match_clusters(y_true, y_pred)
    assert len(mapping) == min(K, L)
    assert len(set(mapping.values())) == len(mapping)  # injective
    correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if mapping.get(int(p)) == t)
    assert correct / len(y_true) == pytest.approx(brute_force_acc(y_true, y_pred))
    M, rows, classes = matched_confusion(y_true, y_pred, return_labels=True)
    assert M.shape == (K, L)
    assert sorted(M.sum(axis=1).tolist()) == sorted(Counter(y_pred.tolist()).values())
    assert M.sum(axis=0).tolist() == [Counter(y_true.tolist())[c] for c in classes]
    for k in rows[: min(K, L)]:
        assert mapping[k] in set(classes)
    if K >= L:  # matched clusters sit on the diagonal
        assert np.trace(M) / len(y_true) == pytest.approx(cluster_accuracy(y_true, y_pred))
        assert [mapping[int(k)] for k in rows[:L]] == list(classes)


# --------------------------------------------------------------------------------------------
# NMI / ARI / AMI against scikit-learn
# --------------------------------------------------------------------------------------------

DEGENERATE = [
    ([], []),
    ([1], [5]),
    ([3, 3, 3, 3], [0, 0, 0, 0]),
    ([0, 1, 2, 3], [0, 0, 0, 0]),
    ([0, 0, 0, 0], [0, 1, 2, 3]),
    ([0, 1, 2, 3], [7, 6, 5, 4]),
    ([0, 0, 1, 1], [0, 1, 0, 1]),
    ([0, 1], [0, 0]),
    (["a", "a", "b"], ["x", "y", "y"]),
]


@pytest.mark.parametrize("y_true,y_pred", DEGENERATE)
def test_degenerate_against_sklearn(y_true, y_pred):
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    assert nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-12)
    assert ari(t, p) == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)
    assert ami(t, p) == pytest.approx(adjusted_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-10)


@pytest.mark.parametrize("seed", range(15))
def test_nmi_ari_ami_against_sklearn_random(seed):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(2, 3000))
    K = int(rng.integers(1, 40))
    L = int(rng.integers(1, 40))
    y_true, y_pred = random_labels(rng, n, K, L, noise=rng.random())
    t = relabel(y_true, ["int", "sparse", "str"][seed % 3], rng)
    p = relabel(y_pred, ["str", "int", "sparse"][seed % 3], rng)
    assert nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-10)
    assert ari(t, p) == pytest.approx(adjusted_rand_score(t, p), abs=1e-10)
    assert ami(t, p) == pytest.approx(adjusted_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-10)


def test_nmi_is_arithmetic_not_geometric():
    rng = np.random.default_rng(5)
    y_true, y_pred = random_labels(rng, 2000, 20, 4, noise=0.3)
    ar = normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic")
    ge = normalized_mutual_info_score(y_true, y_pred, average_method="geometric")
    assert abs(ar - ge) > 1e-3
    assert nmi(y_true, y_pred) == pytest.approx(ar, abs=1e-12)


def test_ari_large_n_no_overflow():
    rng = np.random.default_rng(11)
    n = 300_000  # binom(n, 2) > 2**31
    y_true, y_pred = random_labels(rng, n, 3, 3, noise=0.2)
    y_true = y_true.astype(np.int32)
    y_pred = y_pred.astype(np.int32)
    assert ari(y_true, y_pred) == pytest.approx(adjusted_rand_score(y_true, y_pred), abs=1e-9)


# --------------------------------------------------------------------------------------------
# many-to-one accuracy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_acc_many_to_one_majority_vote(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 500))
    K = int(rng.integers(1, 30))
    L = int(rng.integers(1, 10))
    y_true, y_pred = random_labels(rng, n, K, L, noise=rng.random())
    y_true = relabel(y_true, "str", rng)
    y_pred = relabel(y_pred, "sparse", rng)
    m2o = acc_many_to_one(y_true, y_pred)
    assert m2o == pytest.approx(majority_vote_acc(y_true, y_pred), abs=1e-12)
    assert m2o >= cluster_accuracy(y_true, y_pred) - 1e-12


# --------------------------------------------------------------------------------------------
# label -1 exclusion and evaluate()
# --------------------------------------------------------------------------------------------


def test_minus_one_excluded_from_every_metric():
    rng = np.random.default_rng(21)
    y_true, y_pred = random_labels(rng, 1000, 6, 5, noise=0.5)
    unl = rng.random(1000) < 0.3
    y_true_u = y_true.copy()
    y_true_u[unl] = -1
    y_pred_scrambled = y_pred.copy()
    y_pred_scrambled[unl] = rng.integers(0, 50, int(unl.sum()))  # must not matter
    t, p = y_true[~unl], y_pred[~unl]
    for f in (cluster_accuracy, nmi, ari, ami, acc_many_to_one):
        assert f(y_true_u, y_pred_scrambled) == pytest.approx(f(t, p), abs=1e-12)
    assert nmi(y_true_u, y_pred_scrambled) == pytest.approx(
        normalized_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-10
    )
    assert cluster_accuracy(y_true_u, y_pred_scrambled) == pytest.approx(brute_force_acc(t, p))
    res = evaluate(y_true_u, y_pred_scrambled, extra=True)
    assert res["n_eval"] == int((~unl).sum())
    assert res["n_excluded"] == int(unl.sum())
    assert res["acc"] == pytest.approx(brute_force_acc(t, p))
    assert res["ari"] == pytest.approx(adjusted_rand_score(t, p), abs=1e-10)
    assert res["acc_many_to_one"] == pytest.approx(majority_vote_acc(t, p))
    assert res["ami"] == pytest.approx(adjusted_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-10)


def test_evaluate_keys_and_input_types():
    rng = np.random.default_rng(4)
    y_true, y_pred = random_labels(rng, 200, 4, 4, noise=0.3)
    base = evaluate(y_true, y_pred)
    assert set(base) == {"acc", "nmi", "ari", "n_eval", "n_excluded"}
    assert all(isinstance(base[k], float) for k in ("acc", "nmi", "ari"))
    assert base["n_eval"] == 200 and base["n_excluded"] == 0
    as_list = evaluate(y_true.tolist(), y_pred.tolist())
    as_torch = evaluate(torch.from_numpy(y_true), torch.from_numpy(y_pred))
    assert as_list == base == as_torch
    ext = evaluate(y_true, y_pred, n_clusters=4, extra=True)
    assert {"ami", "acc_many_to_one", "cluster_sizes"} <= set(ext)
    assert ext["cluster_sizes"]["sizes"] == np.bincount(y_pred, minlength=4).tolist()


def test_evaluate_all_unlabelled_raises():
    with pytest.raises(DataError, match="no labelled samples"):
        evaluate([-1, -1, -1], [0, 1, 2])


@pytest.mark.parametrize(
    "y_true,y_pred",
    [
        ([0, 1, 2], [0, 1]),  # length mismatch
        (np.zeros((3, 2)), np.zeros((3, 2))),  # wrong rank
        ([0.0, np.nan, 1.0], [0, 1, 1]),  # NaN label
    ],
)
def test_bad_label_input_raises(y_true, y_pred):
    for f in (cluster_accuracy, nmi, ari, evaluate):
        with pytest.raises(DataError):
            f(y_true, y_pred)


# --------------------------------------------------------------------------------------------
# cluster-size diagnostics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_cluster_size_stats(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(2, 20))
    y_pred = rng.integers(0, max(1, K - 2), int(rng.integers(1, 500)))  # some empty clusters
    stats = cluster_size_stats(torch.from_numpy(y_pred), K)
    counts = Counter(y_pred.tolist())
    sizes = [counts.get(k, 0) for k in range(K)]
    assert stats["sizes"] == sizes
    assert stats["min"] == min(sizes) and stats["max"] == max(sizes)
    assert stats["empty"] == sum(1 for s in sizes if s == 0)
    n = len(y_pred)
    h = -sum((s / n) * math.log(s / n) for s in sizes if s)
    assert stats["entropy_norm"] == pytest.approx(h / math.log(K), abs=1e-12)


def test_cluster_size_stats_edge_cases():
    assert cluster_size_stats([0, 0, 0], 1)["entropy_norm"] == 1.0
    assert cluster_size_stats([0, 1, 2, 3] * 5, 4)["entropy_norm"] == pytest.approx(1.0)
    assert cluster_size_stats([2, 2, 2], 4)["entropy_norm"] == pytest.approx(0.0)
    with pytest.raises(DataError):
        cluster_size_stats([0, 5], 3)
    with pytest.raises(DataError):
        cluster_size_stats([0, 1], 0)
