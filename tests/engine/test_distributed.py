"""torchrun semantics on CPU: gloo, two processes spawned by the tests (spec/design.md "Scale").

The reference is always ONE process on the concatenated global batch (the same code path with
the single-process handle, which gathers nothing). Two things are made exact on purpose:

- BatchNorm is synchronised (``SyncBatchNorm`` / ``train.sync_bn``), so every process
  normalises with the statistics of the global batch, as the one process does; with per-process
  BatchNorm the two runs compute different functions.
- Augmentation is deterministic (random views cannot match: each process draws its own). The
  method-level tests swap in two fixed, different views; the trainer test uses an augmentation
  config whose every random choice is an identity.

What remains is float rounding (sums in a different order), hence the tolerances.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from torch import nn

from deepclust.augment import EvalTransform
from deepclust.cluster import kmeans_distributed
from deepclust.collectives import SINGLE_PROCESS, Collectives, average_gradients
from deepclust.config import resolve_config
from deepclust.data import ImageData
from deepclust.engine import train
from deepclust.engine import trainer as trainer_module
from deepclust.engine.batchnorm import convert_sync_batchnorm
from deepclust.engine.evaluate import predict
from deepclust.engine.setup import build_optimizer
from deepclust.engine.trainer import Trainer
from deepclust.errors import ConfigError
from deepclust.methods import DataInfo, create_method

from ..torchrun_env import free_port, set_torchrun_env

WORLD = 2
N_IMAGES = 40
K = 4

# name -> (method, method_args); small networks, every code path that gathers
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "idfd": ("idfd", {}),
    "secu_size": ("secu", {"n_heads": 2, "frozen_epochs": 0, "projection_hidden": 16}),
    "secu_entropy": (
        "secu",
        {"n_heads": 2, "constraint": "entropy", "entropy_alpha": 20.0, "frozen_epochs": 0, "projection_hidden": 16},
    ),
    "cdc_sinkhorn_queue": ("cdc", {"queue_size": 12, "hidden_dim": 16, "cat_dim": 8}),
    "cdc_similarity": ("cdc", {"sinkhorn_mode": "similarity", "hidden_dim": 16, "cat_dim": 8}),
    "cdc_entropy": ("cdc", {"equipartition": "entropy", "hidden_dim": 16, "cat_dim": 8}),
    "anchorcl": ("anchorcl", {"init_batch_size": 8, "init_n_init": 2}),
}


def _init_gloo(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )


# ----- one training step per method ------------------------------------------------------------
class FixedView(nn.Module):
    """A deterministic stand-in for a random augmentation: calls alternate between the image
    and its mirror image (``kind`` picks which comes first), then normalise."""

    def __init__(self, kind: int) -> None:
        super().__init__()
        self.kind, self.calls = kind, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255
        if (self.kind + self.calls) % 2:
            x = x.flip(-1)
        self.calls += 1
        return (x - 0.5) / 0.25


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, 256, (N_IMAGES, 1, 8, 8), generator=g, dtype=torch.uint8)


def _batches() -> list[torch.Tensor]:
    """Global batches: 16 rows, the same 16 again (second visit: stored labels, updated memory
    rows), then 11 rows (an uneven split, 6 + 5)."""
    perm = torch.randperm(N_IMAGES, generator=torch.Generator().manual_seed(5))
    return [perm[:16], perm[:16], perm[16:27]]


def _build(method: str, args: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer]:
    cfg = resolve_config(
        {
            "method": method,
            "n_clusters": K,
            "model": {"backbone": "small_cnn", "width": 4, "feature_dim": 8},
            "train": {"seed": 3, "device": "cpu", "batch_size": 16},
            # SGD for every method: Adam's first step is lr * sign(g), which turns rounding-level
            # differences of near-zero gradients into lr-sized ones
            "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
            "method_args": args,
        }
    )
    info = DataInfo(n_samples=N_IMAGES, n_channels=1, image_size=8, mean=[0.5], std=[0.25], n_clusters=K)
    torch.manual_seed(3)
    m = create_method(cfg, info)
    m.augment = FixedView(0)
    if hasattr(m, "augment2"):
        m.augment2 = FixedView(1)
    return m, build_optimizer(cfg, m)


def _run(method: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, comm: Collectives) -> dict[str, Any]:
    """The trainer's step (split, weighted loss, backward, gradient average, step, state update)."""
    method.setup(images)
    method.train()
    method.on_epoch_start(0)
    params = [p for p in method.parameters() if p.requires_grad]
    out: dict[str, Any] = {"loss": []}
    for step, gidx in enumerate(_batches()):
        idx = gidx[comm.split(len(gidx))]
        res = method.training_step(images[idx], idx, 0)
        loss = res.loss * comm.loss_weight
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params, comm)
        out["loss"].append(float(comm.all_reduce(loss.detach().clone(), "mean")))
        if step == 0:
            out["grad"] = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        opt.step()
        method.after_optimizer_step(res)
    out["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return out


def _method_worker(rank: int, port: int, out_dir: str) -> None:
    _init_gloo(rank, port)
    comm = Collectives(WORLD, rank, backend="gloo")
    images = _images()
    for case, (name, args) in CASES.items():
        method, opt = _build(name, args)
        convert_sync_batchnorm(method, comm)
        method.dist = comm
        torch.save(_run(method, opt, images, comm), Path(out_dir) / f"{case}.rank{rank}.pt")
    _kmeans_cases(rank, out_dir)
    _predict_cases(comm, out_dir)
    tdist.destroy_process_group()


# ----- distributed k-means -----------------------------------------------------------------------
def _blobs() -> np.ndarray:
    x, _ = make_blobs(600, n_features=8, centers=5, cluster_std=1.0, random_state=0)
    return x.astype(np.float32)


def _shard(x: np.ndarray, rank: int) -> torch.Tensor:
    cut = 350  # uneven shards
    return torch.from_numpy(x[:cut] if rank == 0 else x[cut:])


def _kmeans_cases(rank: int, out_dir: str) -> None:
    x = _blobs()
    mine = _shard(x, rank)
    res = {
        "fixed_init": kmeans_distributed(mine, 5, init=torch.from_numpy(x[:5]), tol=0.0),
        "default": kmeans_distributed(mine, 5, n_init=3, seed=1),
        # two identical starting centres: one cluster empties and must take the farthest point
        "empty": kmeans_distributed(mine, 5, init=torch.from_numpy(x[[0, 0, 1, 2, 3]]), tol=0.0),
    }
    torch.save({k: (r.labels, r.centers, r.inertia) for k, r in res.items()}, Path(out_dir) / f"kmeans.rank{rank}.pt")


# ----- sharded evaluation ------------------------------------------------------------------------
class PixelMethod(nn.Module):
    """A stand-in method whose features are the pixels (so the clustering is checkable)."""

    prediction = "kmeans"

    def __init__(self) -> None:
        super().__init__()
        self.eval_transform = EvalTransform(4, [0.0], [1.0])

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.flatten(1), None


def _pixel_data() -> ImageData:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 301)  # odd: uneven shards
    centers = rng.uniform(40, 215, (3, 16))
    img = np.clip(centers[y] + rng.normal(0, 12, (301, 16)), 0, 255).astype(np.uint8).reshape(301, 1, 4, 4)
    return ImageData(torch.from_numpy(img), torch.from_numpy(y), ["a", "b", "c"], "toy", "train")


def _predict_cfg(distributed_kmeans: bool):
    return resolve_config({"method": "idfd", "eval": {"n_init": 3, "distributed_kmeans": distributed_kmeans}})


def _predict_cases(comm: Collectives, out_dir: str) -> None:
    data = _pixel_data()
    out = {}
    for mode in (False, True):
        pred = predict(PixelMethod(), _predict_cfg(mode), 3, data, data, torch.device("cpu"), dist=comm)
        out[mode] = None if pred is None else (pred.labels, pred.centers, pred.features, pred.info["inertia"])
    torch.save(out, Path(out_dir) / f"predict.rank{comm.rank}.pt")


@pytest.fixture(autouse=True)
def one_thread():
    """The references run with one thread, as the spawned processes: the thread count changes
    the rounding, which SGD then amplifies."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_method_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def _assert_close(got: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """max |got - ref| <= rtol * max |ref| + atol: rounding-level relative to the tensor's scale
    (a factor-2 gradient or a missing gather is off by O(1) of it)."""
    err = float((got.double() - ref.double()).abs().max()) if ref.numel() else 0.0
    scale = float(ref.double().abs().max()) if ref.numel() else 0.0
    assert got.shape == ref.shape and err <= rtol * scale + atol, f"{what}: max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", list(CASES))
def test_one_step_equals_one_process_on_the_global_batch(spawned: Path, case: str) -> None:
    name, args = CASES[case]
    method, opt = _build(name, args)
    ref = _run(method, opt, _images(), SINGLE_PROCESS)
    for rank in range(WORLD):
        got = torch.load(spawned / f"{case}.rank{rank}.pt")
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=1e-6, err_msg=f"loss, rank {rank}")
        assert got["grad"].keys() == ref["grad"].keys()
        for k, g in ref["grad"].items():
            _assert_close(got["grad"][k], g, f"gradient {k}, rank {rank}")
        assert got["state"].keys() == ref["state"].keys()
        for k, v in ref["state"].items():  # parameters, memory bank, labels, duals, counts, queue, BN stats
            if v.is_floating_point():
                _assert_close(got["state"][k], v, f"state {k}, rank {rank}")
            else:
                assert torch.equal(got["state"][k], v), f"state {k}, rank {rank}"


@pytest.mark.multiprocess
def test_the_reference_is_not_trivially_equal(spawned: Path) -> None:
    """The comparison can fail: without the gathers (each process on its own rows) IDFD's loss
    and memory differ from the global-batch reference."""
    method, opt = _build("idfd", {})
    ref = _run(method, opt, _images(), SINGLE_PROCESS)
    method, _ = _build("idfd", {})
    method.train()
    rows = _batches()[0][:8]  # rank 0's rows alone
    res = method.training_step(_images()[rows], rows, 0)
    assert abs(float(res.loss.detach()) - ref["loss"][0]) > 1e-3


@pytest.mark.multiprocess
def test_distributed_kmeans_equals_lloyd_on_all_rows(spawned: Path) -> None:
    x = _blobs()
    parts = [torch.load(spawned / f"kmeans.rank{r}.pt") for r in range(WORLD)]
    labels = torch.cat([p["fixed_init"][0] for p in parts]).numpy()
    sk = KMeans(5, init=x[:5], n_init=1, tol=0.0, algorithm="lloyd").fit(x.astype(np.float64))
    for p in parts:  # the centres and the inertia are global: the same on every process
        np.testing.assert_allclose(p["fixed_init"][1].numpy(), sk.cluster_centers_, atol=1e-4)
        assert p["fixed_init"][2] == pytest.approx(sk.inertia_, rel=1e-5)
    np.testing.assert_array_equal(labels, sk.labels_)


@pytest.mark.multiprocess
def test_distributed_kmeans_with_its_own_init_finds_the_blobs(spawned: Path) -> None:
    x = _blobs()
    parts = [torch.load(spawned / f"kmeans.rank{r}.pt") for r in range(WORLD)]
    labels = torch.cat([p["default"][0] for p in parts]).numpy()
    sk = KMeans(5, n_init=10, random_state=0).fit(x.astype(np.float64))
    assert adjusted_rand_score(sk.labels_, labels) == pytest.approx(1.0)
    assert parts[0]["default"][2] <= sk.inertia_ * (1 + 1e-5)


@pytest.mark.multiprocess
def test_distributed_kmeans_refills_an_empty_cluster(spawned: Path) -> None:
    x = _blobs().astype(np.float64)
    parts = [torch.load(spawned / f"kmeans.rank{r}.pt") for r in range(WORLD)]
    labels = torch.cat([p["empty"][0] for p in parts]).numpy()
    centers = parts[0]["empty"][1].double().numpy()
    assert np.bincount(labels, minlength=5).min() > 0
    inertia = ((x - centers[labels]) ** 2).sum()
    assert parts[0]["empty"][2] == pytest.approx(inertia, rel=1e-5)
    nearest = ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)  # labels are the nearest centres
    np.testing.assert_array_equal(labels, nearest)


@pytest.mark.multiprocess
def test_sharded_evaluation_equals_one_process(spawned: Path) -> None:
    data = _pixel_data()
    ref = predict(PixelMethod(), _predict_cfg(False), 3, data, data, torch.device("cpu"))
    assert ref is not None
    got = torch.load(spawned / "predict.rank0.pt")
    assert torch.load(spawned / "predict.rank1.pt") == {False: None, True: None}  # rank 0 clusters
    labels, centers, feats, inertia = got[False]  # features gathered in order, one k-means
    torch.testing.assert_close(feats, ref.features)
    assert torch.equal(labels, ref.labels)
    torch.testing.assert_close(centers, ref.centers)
    labels, centers, feats, inertia = got[True]  # eval.distributed_kmeans: over the shards
    torch.testing.assert_close(feats, ref.features)
    assert adjusted_rand_score(ref.labels.numpy(), labels.numpy()) == pytest.approx(1.0)
    assert inertia == pytest.approx(ref.info["inertia"], rel=1e-4)


# ----- the trainer: a 2-process run, resumed in 1 process --------------------------------------
def _toy_npz(path: Path) -> str:
    """601 colour images (8x8x3) of 3 classes. Colour, not grey: a convolution of a 1-channel
    input returns a channels-last tensor, and torch's CPU BatchNorm for channels-last input
    accumulates its batch statistics with errors of ~1e-4 at 100k values per channel (measured:
    1.4e-4 against float64, 4e-7 for the same tensor made contiguous), which would swamp the
    comparison; with 3 channels every activation is contiguous."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 601)
    colours = rng.uniform(40, 215, (3, 1, 1, 3))
    img = np.clip(colours[y] + rng.normal(0, 30, (601, 8, 8, 3)), 0, 255).astype(np.uint8)
    np.savez(path, images=img, labels=y)
    return f"npz:{path}"


def _toy_raw(out: Path, epochs: int, data: str) -> dict[str, Any]:
    return {
        "method": "idfd",
        "n_clusters": 3,
        "data": {"name": data, "image_size": 8},
        "model": {"backbone": "small_cnn", "width": 8, "feature_dim": 16},
        "optim": {
            "schedule": "constant",
            "lr": 0.01,
        },  # shared by the 1- and 2-epoch runs; small: SGD on this tiny net amplifies rounding
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "out": str(out),
            "device": "cpu",
            "progress": False,
            "sync_bn": True,
            "seed": 1,
        },
        # every random choice is an identity: the views do not depend on which process draws them
        "augment": {
            "crop_scale": [1.0, 1.0],
            "crop_ratio": [1.0, 1.0],
            "jitter": [0, 0, 0, 0],
            "jitter_p": 0.0,
            "grayscale_p": 0.0,
            "flip_p": 0.0,
        },
        "eval": {"n_init": 3},
    }


def _trainer_worker(rank: int, port: int, raw: dict[str, Any], rec_path: str) -> None:
    set_torchrun_env(rank, port, WORLD)
    torch.set_num_threads(1)
    record = train(resolve_config(raw))
    Path(f"{rec_path}.rank{rank}").write_text(json.dumps(record, default=str))


@pytest.mark.multiprocess
def test_two_process_run_resumed_in_one_process_equals_one_process_run(tmp_path: Path) -> None:
    two, ref_dir = tmp_path / "two", tmp_path / "one"
    data = _toy_npz(tmp_path / "toy.npz")
    raw = _toy_raw(two, epochs=1, data=data)
    mp.spawn(_trainer_worker, args=(free_port(), raw, str(tmp_path / "record")), nprocs=WORLD, join=True)
    # only rank 0 wrote the run directory, and every rank returned its record
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl", "results.json"]
    assert len(list(tmp_path.rglob("results.json"))) == 1
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 1
    recs = [json.loads((tmp_path / f"record.rank{r}").read_text()) for r in range(WORLD)]
    assert recs[0] == recs[1] == json.loads(json.dumps(json.loads((two / "results.json").read_text())))
    assert recs[0]["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": True}
    ckpt = torch.load(two / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2

    resumed = train(resolve_config({**raw, "train": {**raw["train"], "epochs": 2}}), resume=True)
    ref = train(resolve_config(_toy_raw(ref_dir, epochs=2, data=data)))
    a = torch.load(two / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(ref_dir / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:  # 2 epochs x 5 steps (the last uneven: 45 + 44 rows). Rounding alone, amplified
        # by SGD, reaches ~1e-4 of a tensor's scale (one process with 1 or 2 threads); a summed
        # instead of averaged gradient, or a memory update from one process's rows, is off by 1e-1.
        if a[k].is_floating_point():
            _assert_close(a[k], b[k], f"state {k}", rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(a[k], b[k]), k
    assert resumed["epoch"] == ref["epoch"] == 2
    assert resumed["acc"] == pytest.approx(ref["acc"], abs=0.01)


def _selflabel_worker(rank: int, port: int, run: str, out: str, rec_path: str) -> None:
    set_torchrun_env(rank, port, WORLD)
    torch.set_num_threads(1)
    from deepclust.selflabel import selflabel

    record = selflabel(
        run, epochs=1, threshold=0.5, batch_size=200, temperature=0.03, out=out, device="cpu", progress=False
    )
    Path(f"{rec_path}.rank{rank}").write_text(json.dumps(record, default=str))


def test_selflabel_stage_runs_under_torchrun_and_resumes_in_one_process(tmp_path: Path) -> None:
    """The engine runs self-labelling: under torchrun rank 0 alone writes the stage, every rank
    returns its record, the checkpoint holds both processes' RNG streams, and one process
    continues it."""
    from deepclust.selflabel import selflabel

    data = _toy_npz(tmp_path / "toy.npz")
    run, out = tmp_path / "run", tmp_path / "run" / "selflabel"
    train(resolve_config(_toy_raw(run, epochs=1, data=data)))
    mp.spawn(
        _selflabel_worker, args=(free_port(), str(run), str(out), str(tmp_path / "record")), nprocs=WORLD, join=True
    )
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl", "results.json"]
    recs = [json.loads((tmp_path / f"record.rank{r}").read_text()) for r in range(WORLD)]
    assert recs[0] == recs[1] and recs[0]["stage"] == "selflabel"
    assert recs[0]["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": True}
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["stage"] == "selflabel" and ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    # 601 images, global batch 200: 3 full batches of 100 rows per process; the count is global
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train"]
    assert line["confident_fraction"] == pytest.approx(line["confident"] / 600) and line["confident"] > 0
    resumed = selflabel(run, epochs=2, out=out, resume=True, device="cpu", progress=False)
    assert resumed["epoch"] == 2 and resumed["selflabel"]["temperature"] == 0.03
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_global_batch_must_split_evenly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a 2-process handle without a process group: the check runs before any collective
    monkeypatch.setattr(trainer_module, "init_distributed", lambda device: (Collectives(WORLD, 0), device))
    raw = _toy_raw(tmp_path / "odd", epochs=1, data=_toy_npz(tmp_path / "toy.npz"))
    raw["train"]["batch_size"] = 63
    with pytest.raises(ConfigError, match="multiple of 2"):
        Trainer(resolve_config(raw))
