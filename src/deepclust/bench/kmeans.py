"""k-means speed: :func:`deepclust.cluster.kmeans` against scikit-learn (and faiss when
installed) on the same features; see :mod:`deepclust.bench`."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepclust.bench.timing import sync_device
from deepclust.errors import ConfigError, DataError


def kmeans_features(
    kind: str, n: int, dim: int, k: int, seed: int, data_dir: str | None = None
) -> tuple[np.ndarray, str]:
    """float32 (n, dim) features and their description.

    ``blobs``: k Gaussian clusters with centres in [-10, 10]^dim and std 25 (overlapping, so
    Lloyd runs tens of iterations, as on learned features); ``fashion-mnist``: the 60,000
    training images' pixels projected on their first ``dim`` principal components; a path to
    a ``.npy`` file: that (n, dim) array.
    """
    if kind == "blobs":
        from sklearn.datasets import make_blobs

        x, _ = make_blobs(
            n_samples=n, n_features=dim, centers=k, cluster_std=25.0, center_box=(-10.0, 10.0), random_state=seed
        )
        return x.astype(np.float32), f"make_blobs(n={n}, d={dim}, centers={k}, std=25, box=+-10, seed={seed})"
    if kind == "fashion-mnist":
        from deepclust.data import load_dataset

        data = load_dataset("fashion-mnist", "train", data_dir)
        x = data.images.flatten(1).float().div_(255)
        x = x - x.mean(0)
        _, _, v = torch.linalg.svd(x[:: max(1, len(x) // 10000)], full_matrices=False)
        feats = (x @ v[:dim].t()).numpy().astype(np.float32)
        return feats[:n], f"fashion-mnist train pixels, PCA to {dim} dims ({min(n, len(feats))} images)"
    p = Path(kind)
    if p.suffix == ".npy" and p.is_file():
        arr = np.load(p).astype(np.float32)
        if arr.ndim != 2:
            raise DataError(f"{p} must hold a 2-D (n, dim) array, got shape {arr.shape}")
        return arr, f"features from {p}"
    raise ConfigError(f"unknown k-means features '{kind}'; use blobs, fashion-mnist or a .npy file")


def _inertia64(x: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the assigned centres, in float64."""
    diff = x.astype(np.float64) - centers.astype(np.float64)[labels]
    return float(np.einsum("ij,ij->", diff, diff))


def bench_kmeans(
    x: np.ndarray,
    k: int,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    repeats: int = 3,
    device: str = "cpu",
    faiss_too: bool = True,
) -> dict[str, Any]:
    """Wall time (median of ``repeats``, the libraries taking turns) and inertia of deepclust's,
    scikit-learn's and faiss's k-means on the same float32 features, with the same n_init,
    max_iter, tol and seed (faiss: its own random init and fixed iterations)."""
    from sklearn.cluster import KMeans

    from deepclust.cluster import kmeans

    x = np.ascontiguousarray(x, dtype=np.float32)
    dev = torch.device(device)
    xt = torch.from_numpy(x).to(dev)

    def ours() -> tuple[np.ndarray, np.ndarray, float, int]:
        r = kmeans(xt, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)
        sync_device(dev)
        return r.labels.cpu().numpy(), r.centers.cpu().numpy(), r.inertia, r.n_iter

    def sklearn() -> tuple[np.ndarray, np.ndarray, float, int]:
        s = KMeans(
            n_clusters=k,
            init="k-means++",
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            algorithm="lloyd",
            random_state=seed,
        ).fit(x)
        return s.labels_, s.cluster_centers_, float(s.inertia_), int(s.n_iter_)

    libs: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, float, int]]] = {"deepclust": ours, "sklearn": sklearn}
    if faiss_too:
        with contextlib.suppress(ImportError):
            import faiss

            def run_faiss() -> tuple[np.ndarray, np.ndarray, float, int]:
                km = faiss.Kmeans(x.shape[1], k, niter=max_iter, nredo=n_init, seed=seed, verbose=False)
                km.train(x)
                _, lab = km.index.search(x, 1)
                return lab[:, 0], km.centroids, float(km.obj[-1]), max_iter

            libs["faiss"] = run_faiss
    ours()  # warm-up (allocator, kernels, thread pool); not timed
    times: dict[str, list[float]] = {name: [] for name in libs}
    last: dict[str, tuple[np.ndarray, np.ndarray, float, int]] = {}
    for _ in range(repeats):
        for name, fn in libs.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        "n": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "k": k,
        "n_init": n_init,
        "max_iter": max_iter,
        "tol": tol,
        "seed": seed,
        "repeats": repeats,
    }
    for name in libs:
        labels, centers, inertia, n_iter = last[name]
        out[name] = {
            "time_s": round(statistics.median(times[name]), 3),
            "times_s": [round(t, 3) for t in times[name]],
            "inertia": inertia,
            "inertia_f64": _inertia64(x, labels, centers),
            "n_iter_best": n_iter,
        }
    out["deepclust"]["device"] = dev.type
    out["sklearn"]["algorithm"] = "lloyd"
    if "faiss" in out:
        out["faiss"]["init"] = "random (faiss has no k-means++); fixed niter, no tolerance"
    out["inertia_ratio"] = round(out["deepclust"]["inertia_f64"] / out["sklearn"]["inertia_f64"], 6)
    out["speedup_vs_sklearn"] = round(out["sklearn"]["time_s"] / out["deepclust"]["time_s"], 3)
    return out
