"""Streaming loader: images/s of the loader alone and of a training epoch fed by it, against the
in-memory path on the same images, and peak resident memory.

    python benchmarks/stream.py --root /tmp/stream_bench --n 1024 --n-large 100000

Makes (once) two folders of JPEGs under ``--root``: ``small`` (``--n`` images, 128-320 px, random
aspect ratios, 8 classes) and ``large`` (``--n-large`` images, 48-96 px). Every measurement runs
in a fresh child process; its peak memory is the PSS of the process plus its DataLoader workers,
sampled every 50 ms:

- ``decode_one_core``: milliseconds per image of each decoder (pil, torchvision) in one
  process, fastest of 3 passes over 150 files, at 64 and 224 px, one and two views;
- ``loader``: the :class:`~deepclust.engine.stream_loader.StreamLoader` alone, ``--batches``
  batches of ``--batch-size`` random indices with IDFD's one view (and SeCu's two), for each
  decoder (pil, torchvision), on the small folder, and with pil on the large one;
- ``epoch``: one IDFD epoch with a ResNet-18 at ``--size`` px, the folder streamed
  (``data.stream=true``) and held in memory (``data.stream=false``; that epoch is the training
  step alone, its batches are memory gathers).

Writes ``benchmarks/results/stream/stream_<device>[_<tag>].json`` with the machine and load averages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "stream"


def make_folder(root: Path, n: int, lo: int, hi: int, seed: int) -> Path:
    """``n`` JPEGs in 8 class folders, sides drawn from [lo, hi] (made once)."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return root
    for i in range(n):
        k = i % 8
        d = root / f"c{k}"
        f = d / f"{i:07d}.jpg"
        if f.is_file():  # a smaller run made it already
            continue
        rng = np.random.default_rng([seed, i])
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 7 + k * 30) % 256, (yy * 5) % 256, np.full_like(xx, 32 * k)], -1)
        img = np.clip(img + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(f, quality=85)
    done.write_text(str(n))
    return root


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


class PeakMemory:
    """Peak proportional set size (PSS: shared pages split between the processes that map them)
    of this process plus its DataLoader workers, sampled every 50 ms by a thread. ``ru_maxrss``
    would not do: on Linux it carries the parent's peak over fork and exec."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = self.peak_self_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            own = _pss_kb(me)
            self.peak_self_kb = max(self.peak_self_kb, own)
            self.peak_kb = max(self.peak_kb, own + sum(_pss_kb(c) for c in _children(me)))
            self._stop.wait(0.05)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {
            "peak_pss_mb_total": round(self.peak_kb / 1024, 1),
            "peak_pss_mb_main": round(self.peak_self_kb / 1024, 1),
        }


MEM: PeakMemory | None = None


def peak_rss() -> dict[str, float]:
    assert MEM is not None
    return MEM.stop()


def child_loader(a: argparse.Namespace) -> dict:
    import torch

    from deepclust.augment import Augment, AugmentConfig
    from deepclust.data import open_dataset
    from deepclust.engine.stream_loader import StreamLoader

    base = _pss_kb(os.getpid()) / 1024  # after the imports, before any data
    t0 = time.perf_counter()
    data = open_dataset(
        f"folder:{a.folder}", "train", image_size=a.size, stream=True, decoder=a.decoder, workers=a.workers
    )
    open_s = time.perf_counter() - t0
    views = [Augment(AugmentConfig(crop_scale=(0.2, 1.0)), a.size, None, None) for _ in range(a.views)]
    loader = StreamLoader(data, views, torch.device("cpu"), seed=0, workers=a.workers)
    g = torch.Generator().manual_seed(0)
    plan = [torch.randint(0, data.n_samples, (a.batch_size,), generator=g) for _ in range(a.batches + 2)]
    times = []
    t = time.perf_counter()
    for _batch, _ in loader.batches_of(plan):
        now = time.perf_counter()
        times.append(now - t)
        t = now
    steady = sum(times[2:])  # the first two batches include the worker start
    n_workers = loader.workers
    mem = peak_rss()  # before the workers are shut down
    n, c, s = data.n_samples, data.n_channels, data.size
    return {
        "kind": "loader",
        "decoder": a.decoder,
        "views": a.views,
        "n_files": n,
        "workers": n_workers,
        "batch_size": a.batch_size,
        "batches_timed": a.batches,
        "size": s,
        "images_per_s": round(a.batches * a.batch_size / steady, 1),
        "open_s": round(open_s, 2),
        "file_list_mb": round(data.files.nbytes / 2**20, 2),
        "decoded_dataset_mb_at_size": round(n * c * s * s / 2**20, 1),
        "decoded_dataset_mb_at_224": round(n * c * 224 * 224 / 2**20, 1),
        "pss_mb_after_imports": round(base, 1),
        **mem,
    }


def child_epoch(a: argparse.Namespace) -> dict:
    import math

    from deepclust.config import resolve_config
    from deepclust.engine.trainer import Trainer

    cfg = resolve_config(
        {
            "method": "idfd",
            "n_clusters": 8,
            "data": {
                "name": f"folder:{a.folder}",
                "image_size": a.size,
                "stream": a.stream == "stream",
                "workers": a.workers,
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
            },
            "model": {"backbone": "resnet18", "stem": a.stem},
            "train": {
                "epochs": 1,
                "batch_size": a.batch_size,
                "device": "cpu",
                "progress": False,
                "out": str(Path(a.root) / f"run_{a.stream}_{os.getpid()}"),
            },
        }
    )
    base = _pss_kb(os.getpid()) / 1024  # after the imports, before any data
    tr = Trainer(cfg)
    images = tr.place_data()
    n = tr.train_data.n_samples
    iters = math.ceil(n / a.batch_size)
    tr.method.setup(images)
    t0 = time.perf_counter()
    logs = tr._train_epoch(images, 0, iters)
    wall = time.perf_counter() - t0
    mem = peak_rss()
    return {
        "kind": "epoch",
        "data": a.stream,
        "n_files": n,
        "size": a.size,
        "batch_size": a.batch_size,
        "workers": a.workers,
        "backbone": "resnet18",
        "stem": tr.cfg.model.stem,
        "method": "idfd",
        "epoch_s": round(wall, 2),
        "images_per_s": round(n / wall, 1),
        "loss": round(logs["loss"], 4),
        "decoded_dataset_mb_at_size": round(n * 3 * a.size * a.size / 2**20, 1),
        "pss_mb_after_imports": round(base, 1),
        **mem,
    }


def decode_times(folder: Path, sizes: list[int], files: int = 150, repeats: int = 3) -> list[dict]:
    """Milliseconds per image of each decoder on one core, in this process: the fastest of
    ``repeats`` passes over the same files (the minimum is the figure least disturbed by load)."""
    from deepclust.data.crops import ViewSpec, decode_views, sample_rng

    paths = sorted(folder.rglob("*.jpg"))[:files]
    out = []
    for size in sizes:
        for views in (1, 2):
            specs = [ViewSpec("random", (0.2, 1.0))] * views
            for dec in ("pil", "torchvision"):
                best = float("inf")
                for _ in range(repeats):
                    t = time.perf_counter()
                    for i, p in enumerate(paths):
                        decode_views(p, specs, size, "RGB", sample_rng(0, 0, i), dec)
                    best = min(best, time.perf_counter() - t)
                out.append(
                    {"decoder": dec, "size": size, "views": views, "ms_per_image": round(1000 * best / len(paths), 3)}
                )
                logging.info("%s", out[-1])
    return out


def run_child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise SystemExit(
            f"child {args} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    logging.info("%s", rec)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/stream_bench")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--n-large", type=int, default=100_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--stem", default="auto", help="ResNet-18 stem of the epochs (auto: the library's choice for the size)"
    )
    p.add_argument("--skip-epochs", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--decoder", default="pil", help=argparse.SUPPRESS)
    p.add_argument("--views", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--stream", default="stream", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        global MEM
        MEM = PeakMemory()  # started after the imports of this script, before deepclust's
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(child_loader(a) if a.child == "loader" else child_epoch(a)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from deepclust.bench import machine_info, stamp_record, write_record

    root = Path(a.root)
    start = machine_info()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t = time.perf_counter()
    small = make_folder(root / "small", a.n, 128, 320, 0)
    large = make_folder(root / "large", a.n_large, 48, 96, 1) if a.n_large else None
    logging.info("folders ready in %.0f s", time.perf_counter() - t)
    common = [
        "--size",
        str(a.size),
        "--batch-size",
        str(a.batch_size),
        "--workers",
        str(a.workers),
        "--root",
        str(root),
        "--stem",
        a.stem,
    ]
    import torch

    torch.set_num_threads(1)  # one core, as in a loader worker
    decoders = decode_times(small, [64, 224])
    loaders = []
    for dec in ("pil", "torchvision"):
        for views in (1, 2):
            loaders.append(
                run_child(
                    [
                        "loader",
                        "--folder",
                        str(small),
                        "--decoder",
                        dec,
                        "--views",
                        str(views),
                        "--batches",
                        str(a.batches),
                        *common,
                    ]
                )
            )
    if large is not None:
        loaders.append(
            run_child(
                [
                    "loader",
                    "--folder",
                    str(large),
                    "--decoder",
                    "pil",
                    "--views",
                    "1",
                    "--batches",
                    str(a.batches),
                    *common,
                ]
            )
        )
    epochs = (
        []
        if a.skip_epochs
        else [run_child(["epoch", "--folder", str(small), "--stream", s, *common]) for s in ("stream", "memory")]
    )
    rec: dict = {"benchmark": "stream", "decode_one_core": decoders, "loaders": loaders, "epochs": epochs}
    one = {(r["decoder"], r["views"], r["n_files"]): r["images_per_s"] for r in loaders}
    if epochs:
        step = next(e for e in epochs if e["data"] == "memory")["images_per_s"]
        rec["summary"] = {
            "step_images_per_s_in_memory": step,
            "streamed_epoch_images_per_s": next(e for e in epochs if e["data"] == "stream")["images_per_s"],
            "loader_pil_1view_images_per_s": one[("pil", 1, a.n)],
            "loader_keeps_step_fed": one[("pil", 1, a.n)] >= step,
        }
    stamp_record(rec, start, "benchmarks/stream.py", argv if argv is not None else sys.argv[1:], date)
    name = f"stream_cpu{'_' + a.tag if a.tag else ''}.json"
    logging.info("wrote %s", write_record(rec, RESULTS / name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
