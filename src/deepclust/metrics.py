"""Clustering metrics: ACC (Hungarian), many-to-one accuracy, NMI, ARI, AMI and diagnostics.

Definitions follow ``spec/evaluation.md`` section 1:

* labels may be any values (ints, strings, non-contiguous ids); both label vectors are mapped to
  ``0..L-1`` (classes) and ``0..K-1`` (clusters) with ``np.unique(..., return_inverse=True)``;
* samples whose **true** label is ``-1`` (unlabelled) are excluded from every metric;
* the contingency matrix ``C[k, l] = #{i : pred_i = k, true_i = l}`` (shape K x L) is built in
  one vectorised ``bincount`` of ``pred * L + true``.

Inputs may be numpy arrays, lists or torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import DataError

__all__ = [
    "contingency_matrix",
    "cluster_accuracy",
    "acc_many_to_one",
    "nmi",
    "ari",
    "ami",
    "evaluate",
    "match_clusters",
    "matched_confusion",
    "cluster_size_stats",
]

#: the true label that marks an unlabelled sample
UNLABELLED = -1

# A dense K x L matrix above this many cells is not built for NMI/ARI/purity; the non-zero cells
# are counted instead (same numbers, bounded memory). ACC needs the dense matrix.
_DENSE_LIMIT = 1 << 26
_ACC_DENSE_LIMIT = 1 << 28


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _to_numpy(a: Any, name: str) -> np.ndarray:
    """Convert a list / numpy array / torch tensor to a 1-D numpy array."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch tensor, without importing torch
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise DataError(
            f"{name} must be a 1-D vector of labels, got shape {arr.shape}; flatten it or pass one label per sample"
        )
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or inf labels; give every sample a finite label")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    return arr


def _labelled_mask(y_true: np.ndarray) -> np.ndarray | None:
    """Boolean mask of samples whose true label is not -1 (None when nothing is excluded)."""
    if y_true.dtype.kind in "iuf":
        mask = y_true != UNLABELLED
    elif y_true.dtype.kind == "O":
        mask = np.array([not _is_minus_one(v) for v in y_true], dtype=bool)
    else:  # strings, bytes: -1 cannot occur
        return None
    return None if mask.all() else mask


def _is_minus_one(v: Any) -> bool:
    try:
        return bool(v == UNLABELLED) and not isinstance(v, (str, bytes))
    except Exception:  # noqa: BLE001  # pragma: no cover - == on an exotic label object may raise anything
        return False


def _prepare(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate, convert and drop unlabelled samples; returns (y_true, y_pred, n_excluded)."""
    t = _to_numpy(y_true, "y_true")
    p = _to_numpy(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise DataError(
            f"y_true has {t.shape[0]} labels but y_pred has {p.shape[0]}; pass one prediction "
            "per labelled sample, in the same order"
        )
    mask = _labelled_mask(t)
    if mask is None:
        return t, p, 0
    return t[mask], p[mask], int((~mask).sum())


def _encode(t: np.ndarray, p: np.ndarray):
    """Map labels to 0..L-1 / 0..K-1. Returns (classes, t_idx, clusters, p_idx)."""
    classes, t_idx = np.unique(t, return_inverse=True)
    clusters, p_idx = np.unique(p, return_inverse=True)
    return classes, t_idx.reshape(-1).astype(np.int64), clusters, p_idx.reshape(-1).astype(np.int64)


def _dense(t_idx: np.ndarray, p_idx: np.ndarray, K: int, L: int) -> np.ndarray:
    """C (K x L, int64) in one bincount of pred * L + true."""
    return np.bincount(p_idx * L + t_idx, minlength=K * L).reshape(K, L)


def _cells(t_idx: np.ndarray, p_idx: np.ndarray, K: int, L: int):
    """(non-zero cell counts, cluster index of each cell, class index of each cell, a, b).

    Uses the dense bincount when K*L is moderate, otherwise counts only the occupied cells.
    """
    if K * L <= _DENSE_LIMIT:
        C = _dense(t_idx, p_idx, K, L)
        kk, ll = np.nonzero(C)
        return C[kk, ll], kk, ll, C.sum(axis=1), C.sum(axis=0)
    codes, counts = np.unique(p_idx * L + t_idx, return_counts=True)
    return counts, codes // L, codes % L, np.bincount(p_idx, minlength=K), np.bincount(t_idx, minlength=L)


def _require_samples(n: int, what: str) -> None:
    if n == 0:
        raise DataError(
            f"{what}: no labelled samples (empty input, or every true label is -1); evaluate on a split that has labels"
        )


# --------------------------------------------------------------------------------------------
# contingency and matching
# --------------------------------------------------------------------------------------------


def contingency_matrix(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency matrix ``C[k, l] = #{i : pred_i = clusters[k], true_i = classes[l]}``.

    Built in one ``bincount`` of ``pred_idx * L + true_idx``. Samples with true label -1 are left
    out. Returns ``(C, classes, clusters)`` with C of shape (K clusters, L classes), int64.
    """
    t, p, _ = _prepare(y_true, y_pred)
    classes, t_idx, clusters, p_idx = _encode(t, p)
    return _dense(t_idx, p_idx, len(clusters), len(classes)), classes, clusters


def _hungarian(t: np.ndarray, p: np.ndarray):
    """Run the matching; returns (C, classes, clusters, rows, cols)."""
    classes, t_idx, clusters, p_idx = _encode(t, p)
    K, L = len(clusters), len(classes)
    if K * L > _ACC_DENSE_LIMIT:
        raise DataError(
            f"{K} clusters x {L} classes is too large for Hungarian matching; check that y_pred "
            "holds cluster ids and not per-sample values"
        )
    C = _dense(t_idx, p_idx, K, L)
    rows, cols = linear_sum_assignment(C, maximize=True)
    return C, classes, clusters, rows, cols


def cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Clustering accuracy with one-to-one (Hungarian) matching.

    ``ACC = max_sigma (1/n) sum_k C[k, sigma(k)]`` over injective maps sigma between clusters and
    classes (min(K, L) pairs). With K > L the unmatched clusters' samples count as errors.
    Solved with ``scipy.optimize.linear_sum_assignment(C, maximize=True)`` on the rectangular C.
    """
    t, p, _ = _prepare(y_true, y_pred)
    _require_samples(t.shape[0], "cluster_accuracy")
    C, _, _, rows, cols = _hungarian(t, p)
    return float(C[rows, cols].sum() / t.shape[0])


def match_clusters(y_true: Any, y_pred: Any) -> dict:
    """Hungarian matching as a dict ``{cluster value: class value}``.

    Only matched clusters appear (min(K, L) entries); with K > L the extra clusters are absent.
    """
    t, p, _ = _prepare(y_true, y_pred)
    _require_samples(t.shape[0], "match_clusters")
    _, classes, clusters, rows, cols = _hungarian(t, p)
    return {_py(clusters[r]): _py(classes[c]) for r, c in zip(rows, cols, strict=True)}


def matched_confusion(
    y_true: Any, y_pred: Any, return_labels: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confusion matrix (K x L, int64) with the clusters reordered to their matched classes.

    Columns are the classes in sorted order. Rows are first the matched clusters, ordered by the
    class they are matched to, then the unmatched clusters (K > L) in sorted order. When K >= L
    the diagonal holds the correctly matched counts and ``trace / n == cluster_accuracy``.
    With ``return_labels=True`` returns ``(M, row_clusters, classes)``.
    """
    t, p, _ = _prepare(y_true, y_pred)
    _require_samples(t.shape[0], "matched_confusion")
    C, classes, clusters, rows, cols = _hungarian(t, p)
    matched = rows[np.argsort(cols, kind="stable")]
    unmatched = np.setdiff1d(np.arange(C.shape[0]), rows)
    order = np.concatenate([matched, unmatched]).astype(np.int64)
    M = C[order]
    if return_labels:
        return M, clusters[order], classes
    return M


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def acc_many_to_one(y_true: Any, y_pred: Any) -> float:
    """Many-to-one accuracy (purity): ``(1/n) sum_k max_l C[k, l]``.

    Each cluster takes its majority class. Not comparable with ACC (it rises to 1 as K grows);
    never report it as "acc".
    """
    t, p, _ = _prepare(y_true, y_pred)
    _require_samples(t.shape[0], "acc_many_to_one")
    classes, t_idx, clusters, p_idx = _encode(t, p)
    K, L = len(clusters), len(classes)
    if K * L <= _DENSE_LIMIT:
        best = _dense(t_idx, p_idx, K, L).max(axis=1)
    else:
        counts, kk, _, _, _ = _cells(t_idx, p_idx, K, L)
        best = np.zeros(K, dtype=np.int64)
        np.maximum.at(best, kk, counts)
    return float(best.sum() / t.shape[0])


def _entropy(sizes: np.ndarray, n: float) -> float:
    s = sizes[sizes > 0].astype(np.float64)
    if s.size <= 1:
        return 0.0
    return float(-np.sum((s / n) * (np.log(s) - np.log(n))))


def nmi(y_true: Any, y_pred: Any) -> float:
    """Normalised mutual information with arithmetic averaging.

    ``I = sum_kl (C_kl/n) log(n C_kl / (a_k b_l))``, ``NMI = I / ((H(Y) + H(Yhat)) / 2)``.
    Conventions of scikit-learn: 1.0 when both labelings have a single value (or are empty),
    0.0 when the mutual information is 0.
    """
    t, p, _ = _prepare(y_true, y_pred)
    classes, t_idx, clusters, p_idx = _encode(t, p)
    K, L = len(clusters), len(classes)
    if K == L == 1 or K == L == 0:
        return 1.0
    counts, kk, ll, a, b = _cells(t_idx, p_idx, K, L)
    n = float(t.shape[0])
    c = counts.astype(np.float64)
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    mi = float(np.sum((c / n) * (np.log(c) + np.log(n) - np.log(af[kk]) - np.log(bf[ll]))))
    if mi <= np.finfo(np.float64).eps * max(1.0, np.log(n)):
        return 0.0
    denom = 0.5 * (_entropy(a, n) + _entropy(b, n))
    denom = max(denom, np.finfo(np.float64).eps)
    return float(min(mi / denom, 1.0))


def ari(y_true: Any, y_pred: Any) -> float:
    """Adjusted Rand index, counts in float64 (no int32 overflow).

    ``index = sum binom(C_kl, 2)``, ``expected = sum_k binom(a_k,2) sum_l binom(b_l,2) / binom(n,2)``,
    ``max = (sum_k binom(a_k,2) + sum_l binom(b_l,2)) / 2``,
    ``ARI = (index - expected) / (max - expected)``; 1.0 for empty input or full agreement
    (scikit-learn's convention).
    """
    t, p, _ = _prepare(y_true, y_pred)
    classes, t_idx, clusters, p_idx = _encode(t, p)
    K, L = len(clusters), len(classes)
    if t.shape[0] == 0:
        return 1.0
    counts, _, _, a, b = _cells(t_idx, p_idx, K, L)

    def comb2(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float(np.sum(x * (x - 1.0)) / 2.0)

    index = comb2(counts)
    sum_a = comb2(a)
    sum_b = comb2(b)
    if index == sum_a == sum_b:  # no disagreeing pair (includes n == 1)
        return 1.0
    n = float(t.shape[0])
    expected = sum_a * sum_b / (n * (n - 1.0) / 2.0)
    max_index = 0.5 * (sum_a + sum_b)
    return float((index - expected) / (max_index - expected))


def ami(y_true: Any, y_pred: Any) -> float:
    """Adjusted mutual information, arithmetic normalisation (scikit-learn's implementation)."""
    from sklearn.metrics import adjusted_mutual_info_score

    t, p, _ = _prepare(y_true, y_pred)
    _, t_idx, _, p_idx = _encode(t, p)
    return float(adjusted_mutual_info_score(t_idx, p_idx, average_method="arithmetic"))


# --------------------------------------------------------------------------------------------
# diagnostics and the one-call evaluation
# --------------------------------------------------------------------------------------------


def cluster_size_stats(y_pred: Any, n_clusters: int) -> dict:
    """Cluster-size diagnostics for predictions in ``0..n_clusters-1``.

    Returns ``sizes`` (bincount, length K), ``min``, ``max``, ``empty`` (clusters with no sample)
    and ``entropy_norm = H(sizes / n) / log K`` (1.0 when K == 1, 0.0 for no samples).
    """
    p = _to_numpy(y_pred, "y_pred")
    if isinstance(n_clusters, bool) or int(n_clusters) != n_clusters or n_clusters < 1:
        raise DataError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    K = int(n_clusters)
    if p.size and p.dtype.kind not in "iu":
        if p.dtype.kind == "f" and np.all(p == np.round(p)):
            p = p.astype(np.int64)
        else:
            raise DataError(
                f"y_pred must hold integer cluster ids 0..{K - 1}, got dtype {p.dtype}; map the "
                "cluster labels to integers first"
            )
    p = p.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= K):
        raise DataError(
            f"y_pred holds cluster ids in [{p.min()}, {p.max()}] but n_clusters={K}; pass the "
            "number of clusters of the model that made the predictions"
        )
    sizes = np.bincount(p, minlength=K)
    n = int(sizes.sum())
    if K == 1:
        ent = 1.0
    elif n == 0:
        ent = 0.0
    else:
        ent = _entropy(sizes, float(n)) / float(np.log(K))
    return {
        "sizes": [int(s) for s in sizes],
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "empty": int((sizes == 0).sum()),
        "entropy_norm": float(ent),
    }


def evaluate(y_true: Any, y_pred: Any, n_clusters: int | None = None, extra: bool = False) -> dict:
    """All headline metrics at once.

    ACC is the Hungarian one-to-one accuracy, NMI uses arithmetic averaging. Samples whose true
    label is -1 are excluded and counted in ``n_excluded``.

    Parameters
    ----------
    y_true : (N,) true labels (array-like of ints or strings; -1 = unlabelled).
    y_pred : (N,) predicted cluster ids.
    n_clusters : K; when given, ``"cluster_sizes"`` holds :func:`cluster_size_stats` of all
        predictions (labelled or not), which requires y_pred to be ids in ``0..n_clusters-1``.
    extra : also compute ``"ami"`` and ``"acc_many_to_one"``.

    Returns
    -------
    dict
        ``{"acc", "nmi", "ari", "n_eval", "n_excluded"}`` (floats; counts as ints), plus the
        extra keys above when asked for.

    Raises
    ------
    DataError
        On inputs of different lengths, or when no sample is labelled.
    """
    t_all = _to_numpy(y_true, "y_true")
    p_all = _to_numpy(y_pred, "y_pred")
    t, p, n_excluded = _prepare(t_all, p_all)
    if t.shape[0] == 0:
        raise DataError(
            f"no labelled samples to evaluate ({n_excluded} samples, all with true label -1); "
            "evaluate on a split that has labels"
        )
    out: dict = {
        "acc": cluster_accuracy(t, p),
        "nmi": nmi(t, p),
        "ari": ari(t, p),
        "n_eval": int(t.shape[0]),
        "n_excluded": int(n_excluded),
    }
    if extra:
        out["ami"] = ami(t, p)
        out["acc_many_to_one"] = acc_many_to_one(t, p)
    if n_clusters is not None:
        out["cluster_sizes"] = cluster_size_stats(p_all, n_clusters)
    return out
