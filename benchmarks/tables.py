"""Every results table of README.md and docs/*.md, generated from the records in benchmarks/results/.

    python benchmarks/tables.py           # rewrite the tables in place
    python benchmarks/tables.py --check   # exit 1 and name the tables that differ from their records

A table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` (NAME a key of
``TABLES``); everything between the two markers is replaced, so a figure cannot drift from its
file. A marker with an unknown NAME, or one without its closing marker, is an error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# the quality matrix the README and docs show (a record made with --tag sits beside it)
MATRIX = RESULTS / "quality_matrix" / "quality_matrix.json"
# the same cells trained under bf16 autocast on a CPU with AMX-BF16 (issue #28's quality check)
MATRIX_BF16 = RESULTS / "quality_matrix" / "quality_matrix_bf16.json"
BF16_TOLERANCE = 0.02  # a bf16 cell's mean ACC and NMI within 2 points of its float32 cell's
METHOD_ORDER = ("idfd", "secu", "cdc", "anchorcl", "scan")
MARKER = re.compile(r"<!-- table:([\w-]+) -->\n.*?<!-- /table:\1 -->", re.S)
OPEN = re.compile(r"<!-- table:([\w-]+) -->")


def _script(name: str) -> ModuleType:
    """A benchmark script as a module (its table writer), without running its main()."""
    spec = importlib.util.spec_from_file_location(f"_tables_{name}", HERE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def matrix_full() -> str:
    """The quality matrix's own table (``quality_matrix.py``'s Markdown writer, without its title)."""
    md = _script("quality_matrix").markdown(_load(MATRIX)["table"], "-")
    return md.split("\n", 2)[2].strip()


def matrix_summary() -> str:
    """Worst seed of every method per dataset (the flag form's rows), beside raw-pixel k-means."""
    rows = [r for r in _load(MATRIX)["table"] if r["mode"] == "defaults"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=_order)
    cell = {(r["method"], r["dataset"]): r for r in rows}

    def pair(acc: float | None, nmi: float | None) -> str:
        return "-" if acc is None or nmi is None else f"{acc:.3f} / {nmi:.3f}"

    out = ["| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for m in methods:
        scores = [pair(cell[m, d]["acc_min"], cell[m, d]["nmi_min"]) if (m, d) in cell else "-" for d in datasets]
        out.append(f"| {m} | " + " | ".join(scores) + " |")
    # the highest of the k-means means beside each method (they differ only in k-means' restarts)
    km = [
        max((cell[m, d]["kmeans_acc"], cell[m, d]["kmeans_nmi"]) for m in methods if (m, d) in cell) for d in datasets
    ]
    out.append("| k-means on raw pixels | " + " | ".join(pair(a, n) for a, n in km) + " |")
    return "\n".join(out)


def matrix_bf16() -> str:
    """Each cell of the bf16 matrix (mean and worst of its seeds) beside the same float32 cell."""
    fp32 = {(r["method"], r["dataset"], r["mode"]): r for r in _load(MATRIX)["table"]}
    rec = _load(MATRIX_BF16)
    out = [
        "| method | dataset | float32 ACC / NMI (mean, min) | bf16 ACC / NMI (mean, min) "
        "| bf16 - float32, mean ACC / NMI (points) | within 2 points |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(
        rec["table"], key=lambda r: (list(rec["settings"]["datasets"]).index(r["dataset"]), _order(r["method"]))
    ):
        f = fp32.get((r["method"], r["dataset"], r["mode"]))
        if f is None or r["acc_mean"] is None:
            continue
        da, dn = r["acc_mean"] - f["acc_mean"], r["nmi_mean"] - f["nmi_mean"]
        ok = "yes" if abs(da) <= BF16_TOLERANCE and abs(dn) <= BF16_TOLERANCE else "no"
        out.append(
            f"| {r['method']} | {r['dataset']} "
            f"| {f['acc_mean']:.3f} / {f['nmi_mean']:.3f} ({f['acc_min']:.3f} / {f['nmi_min']:.3f}) "
            f"| {r['acc_mean']:.3f} / {r['nmi_mean']:.3f} ({r['acc_min']:.3f} / {r['nmi_min']:.3f}) "
            f"| {100 * da:+.1f} / {100 * dn:+.1f} | {ok} |"
        )
    return "\n".join(out)


def cpu_precision() -> str:
    """``cpu_precision.py``'s summary on a CPU with AMX-BF16: float32, bf16 and the reference loop."""
    rec = _load(RESULTS / "cpu_precision" / "summary_amx.json")
    m = rec["machine"]
    flags = ", ".join(m.get("cpu_bf16_flags") or []) or "none"
    return (
        _script("cpu_precision").table(rec["rows"])
        + f"\n\n{m['cpu_model']}, {m['cpu_count']} cores, bf16 flags: {flags}; torch {m['torch']}; "
        f"load average {m['loadavg']} at the start of the last record."
    )


def pretrained() -> str:
    """``pretrained.py --table``: every method's worst and best seed beside k-means, per dataset."""
    return _script("pretrained").table(sorted((RESULTS / "pretrained").glob("*.json")))


def pretrained_references() -> str:
    """``pretrained.py``'s references: neighbour purity, spectral clustering and a linear probe per dataset."""
    return _script("pretrained").references_table(sorted((RESULTS / "pretrained").glob("*.json")))


def quality_runs() -> str:
    """The single ``quality.py`` runs: one method, one dataset, seed 0, beside raw-pixel k-means."""
    out = [
        "| method | data | ACC | NMI | ARI | k-means raw pixels ACC / NMI / ARI | k-means on its features ACC "
        "| epochs | wall s |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    recs = [_load(p) for p in sorted((RESULTS / "quality").glob("*.json"))]
    for r in sorted(recs, key=lambda r: (r["dataset"], _order(r["method"]))):
        res, km = r["method_result"], r["kmeans_raw_pixels"]
        own = r.get("kmeans_on_method_features")
        own_acc = f"{own['acc']:.4f}" if own else "-"
        out.append(
            f"| {r['method']} | {r['dataset']} {r['split']} "
            f"| {res['acc']:.4f} | {res['nmi']:.4f} | {res['ari']:.4f} "
            f"| {km['acc']:.4f} / {km['nmi']:.4f} / {km['ari']:.4f} | {own_acc} | {res['epoch']} "
            f"| {res['wall_time_s']:.0f} |"
        )
    return "\n".join(out)


def throughput() -> str:
    """``deepclust bench`` records: deepclust's training step against the reference loop."""
    model = {"resnet18": "ResNet-18", "small_cnn": "small CNN"}
    out = [
        "| method | data | model, batch | deepclust img/s | reference img/s | speed-up | device |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    recs = [_load(p) for p in sorted((RESULTS / "throughput").glob("*.json"))]

    # ResNet rows first, then the small CNN's, its one larger dataset last
    def key(r: dict[str, Any]) -> tuple[bool, bool, int]:
        small = r["backbone"] != "resnet18"
        return small, small and r["n_images"] > 10_000, _order(r["method"])

    for r in sorted(recs, key=key):
        out.append(
            f"| {r['method']} | {r['dataset']} {r['split']} ({r['n_images'] // 1000}k) "
            f"| {model.get(r['backbone'], r['backbone'])} {r['image_size']} px, {r['batch_size']} "
            f"| {r['deepclust']['images_per_s']:.1f} | {r['reference']['images_per_s']:.1f} "
            f"| {r['speedup']:.2f}x "
            f"| {r['machine']['cpu_model'] if r['device'] == 'cpu' else r['device_name']} ({r['device']}) |"
        )
    return "\n".join(out)


def kmeans() -> str:
    """``deepclust bench --kmeans`` records: torch k-means against scikit-learn's."""
    out = [
        "| features | N x D, K, n_init | deepclust s | scikit-learn s | inertia ratio | device |",
        "|---|---|---:|---:|---:|---|",
    ]
    for p in sorted((RESULTS / "kmeans").glob("*.json")):
        r = _load(p)
        out.append(
            f"| {r['features']} | {r['n']:,} x {r['dim']}, {r['k']}, {r['n_init']} "
            f"| {r['deepclust']['time_s']:.2f} "
            f"| {r['sklearn']['time_s']:.2f} ({r['sklearn']['algorithm']}) | {r['inertia_ratio']:.4f} "
            f"| {r['machine']['cpu_model']} ({r['deepclust']['device']}) |"
        )
    return "\n".join(out)


def tta() -> str:
    """Time-to-accuracy records: when each target ACC was first reached."""
    out = [
        "| method | data | target ACC | outcome | train s to target | epoch | best ACC (epochs run) |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for p in sorted((RESULTS / "tta").glob("*.json")):
        r = _load(p)
        t = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}"
        e = "-" if r["epoch_at_target"] is None else str(r["epoch_at_target"])
        last = r["curve"][-1]
        out.append(
            f"| {r['method']} | {r['dataset']} {r['split']} | {r['target_acc']} | {r['outcome']} | {t} | {e} "
            f"| {r['best_acc']:.3f} ({last['epoch']} epochs, {last['train_s']:.0f} s of training) |"
        )
    return "\n".join(out)


def ddp() -> str:
    """One process against torchrun on the same config, global batch, epochs and seed."""
    out = ["| method | data | run | ACC | NMI | ARI | wall s |", "|---|---|---|---:|---:|---:|---:|"]
    for p in sorted((RESULTS / "ddp").glob("*.json")):
        r = _load(p)
        for name, run in r["runs"].items():
            out.append(
                f"| {r['method']} | {r['dataset']} {r['split']} | {name.replace('_', ' ')} | {run['acc']:.4f} "
                f"| {run['nmi']:.4f} | {run['ari']:.4f} | {run['wall_time_s']:.0f} |"
            )
    return "\n".join(out)


def faults() -> str:
    """Fault injection: kills, what survived, and the bad inputs with their exit status."""
    out = [
        "| record | kills | survived | checkpoints lost | runs with other weights | metrics inconsistencies "
        "| bad inputs: one line, exit 2 | exit 0 by design |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in sorted((RESULTS / "faults").glob("*.json")):
        r = _load(p)
        f, bad = r["faults"], r["bad_inputs"]
        zero = "; ".join(b["input"] for b in bad if b["exit"] == 0) or "-"
        out.append(
            f"| `{p.name}` | {f['kills']} | {f['kills_survived']} | {f['checkpoints_lost']} "
            f"| {f['runs_with_different_weights']} | {f['metrics_inconsistencies']} "
            f"| {sum(b['exit'] == 2 for b in bad)} of {len(bad)} | {zero} |"
        )
    return "\n".join(out)


TABLES: dict[str, Callable[[], str]] = {
    "matrix-summary": matrix_summary,
    "matrix": matrix_full,
    "matrix-bf16": matrix_bf16,
    "cpu-precision": cpu_precision,
    "pretrained": pretrained,
    "pretrained-references": pretrained_references,
    "quality": quality_runs,
    "throughput": throughput,
    "kmeans": kmeans,
    "tta": tta,
    "ddp": ddp,
    "faults": faults,
}


def targets() -> list[Path]:
    """The files whose tables are generated: README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def render(text: str, cache: dict[str, str]) -> str:
    """``text`` with every marked table regenerated (``cache``: tables already built, by name)."""
    names = OPEN.findall(text)
    for name in names:
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    if len(MARKER.findall(text)) != len(names):
        raise ValueError("a <!-- table:NAME --> marker has no <!-- /table:NAME --> after it")

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in cache:
            cache[name] = TABLES[name]()
        return f"<!-- table:{name} -->\n\n{cache[name]}\n\n<!-- /table:{name} -->"

    return MARKER.sub(fill, text)


def stale(paths: list[Path] | None = None) -> list[str]:
    """The files whose tables differ from what their records give (nothing is written)."""
    cache: dict[str, str] = {}
    return [str(p.relative_to(ROOT)) for p in (paths or targets()) if render(p.read_text(), cache) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs from its records")
    a = p.parse_args(argv)
    try:
        if a.check:
            bad = stale()
            for name in bad:
                print(f"{name}: tables differ from the records (run python benchmarks/tables.py)")
            return 1 if bad else 0
        cache: dict[str, str] = {}
        for path in targets():
            text = path.read_text()
            new = render(text, cache)
            if new != text:
                path.write_text(new)
                print(f"rewrote the tables of {path.relative_to(ROOT)}")
    except ValueError as exc:
        print(f"tables.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
