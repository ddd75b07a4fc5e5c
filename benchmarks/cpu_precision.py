"""float32 against bf16 (and torch.compile) on the CPU, against the reference loop, in one run.

    python benchmarks/cpu_precision.py --data-dir ../shared/data
    python benchmarks/cpu_precision.py --data-dir ../shared/data --setups resnet18 --methods idfd
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/cpu_precision.py ...   # as a CPU without bf16 units
    python benchmarks/cpu_precision.py --smoke --out-dir /tmp/x              # seconds: the test suite's check

For every method (idfd, secu, cdc, anchorcl) and setup, :func:`deepclust.bench.bench_throughput`
times, in the same rounds on the same CPU, deepclust's real training step in float32
(``train.amp=off``) and under bf16 autocast (``train.amp=bf16``), for ``--compile-methods`` also
with ``train.compile=true`` (inductor; its compile time is in ``first_warmup_s``), and the
reference loop written like the published codes (PIL + torchvision per image in DataLoader
workers, float32). Setups:

- ``small_cnn``: the small CNN at 28 px on Fashion-MNIST test (10,000 glyphs), the method's
  packaged ``fashion-mnist`` config;
- ``resnet18``: ResNet-18 with the CIFAR stem at 32 px on ``cifar10-jpeg`` train (50,000), the
  method's packaged CIFAR-10 config (AnchorCL: ``cifar10-native``) with ResNet-18 at 32 px.

Each record (``<out-dir>/<method>_<setup>_<cpu>.json``, ``<cpu>``: amx, avx512bf16 or nobf16, with
``_isa-<limit>`` under ``ONEDNN_MAX_CPU_ISA``) holds the CPU's model name, its bf16 flags, what
``train.amp=auto`` picks there and why, the load average at start and end, every side's windows,
and ``variants`` with each side's images/s, its ratio to float32 (``vs_first``) and to the
reference (``speedup``). ``summary_<cpu>.json`` and the printed table collect the medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_precision"
METHODS = ("idfd", "secu", "cdc", "anchorcl")
SETUPS: dict[str, dict[str, Any]] = {
    "small_cnn": {
        "config": "{m}/fashion-mnist",
        "data": "fashion-mnist",
        "split": "test",
        "overrides": ["model.backbone=small_cnn"],
    },
    "resnet18": {
        "config": "{m}/cifar10",
        "data": "cifar10-jpeg",
        "split": "train",
        "overrides": ["model.backbone=resnet18", "model.stem=cifar", "data.image_size=32"],
    },
    # --smoke: the bundled digits, a narrow small CNN (the test suite, no shared data)
    "smoke": {
        "config": None,
        "data": "digits",
        "split": "train+test",
        "overrides": [
            "model.backbone=small_cnn",
            "model.width=8",
            "model.feature_dim=16",
            "data.image_size=8",
            "method_args.n_heads=2",
        ],
    },
}
PACKAGED = {("anchorcl", "resnet18"): "anchorcl/cifar10-native"}


def cpu_tag(flags: list[str]) -> str:
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    base = "amx" if "amx_bf16" in flags else "avx512bf16" if "avx512_bf16" in flags else "nobf16"
    return f"{base}_isa-{isa.lower()}" if isa else base


def setup_config(method: str, setup: str, data_dir: str | None, batch_size: int | None, extra: list[str]) -> Any:
    """The packaged config of the setup for ``method``, with its data, split and model forced."""
    from deepclust.bench import bench_config

    s = SETUPS[setup]
    name = PACKAGED.get((method, setup), s["config"].format(m=method) if s["config"] else None)
    over = [
        f"data.name={s['data']}",
        f"data.train_split={s['split']}",
        f"data.eval_split={s['split']}",
        *s["overrides"],
        *extra,
    ]
    if method != "secu":
        over = [o for o in over if not o.startswith("method_args.n_heads")]
    data = name.split("/", 1)[1] if name else s["data"]  # bench_config reads <method>/<data>.yaml
    return bench_config(method, data, data_dir, None, batch_size, "cpu", over)


def variants(method: str, compile_methods: list[str]) -> dict[str, list[str]]:
    out = {"fp32": ["train.amp=off"], "bf16": ["train.amp=bf16"]}
    if method in compile_methods:
        out["fp32_compile"] = ["train.amp=off", "train.compile=true"]
        out["bf16_compile"] = ["train.amp=bf16", "train.compile=true"]
    return out


def summary_row(rec: dict[str, Any], setup: str) -> dict[str, Any]:
    row: dict[str, Any] = {"method": rec["method"], "setup": setup, "batch_size": rec["batch_size"]}
    for name, v in rec["variants"].items():
        row[f"{name}_images_per_s"] = v["images_per_s"]
        row[f"{name}_vs_fp32"] = v["vs_first"]
        if "speedup" in v:
            row[f"{name}_vs_reference"] = v["speedup"]
        if name.endswith("compile"):
            row[f"{name}_first_warmup_s"] = v["first_warmup_s"]
    if "reference" in rec:
        row["reference_images_per_s"] = rec["reference"]["images_per_s"]
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| method | setup | fp32 img/s | bf16 img/s | bf16/fp32 | reference img/s | bf16/reference "
        "| compile fp32 / bf16 img/s (first warm-up s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        comp = ""
        if "fp32_compile_images_per_s" in r:
            comp = (
                f"{r['fp32_compile_images_per_s']:.1f} ({r['fp32_compile_first_warmup_s']:.0f} s) / "
                f"{r['bf16_compile_images_per_s']:.1f} ({r['bf16_compile_first_warmup_s']:.0f} s)"
            )
        ref = r.get("reference_images_per_s")
        ref_s = "" if ref is None else f"{ref:.1f}"
        ratio = "" if ref is None else f"{r['bf16_vs_reference']:.2f}x"
        print(
            f"| {r['method']} | {r['setup']} | {r['fp32_images_per_s']:.1f} | {r['bf16_images_per_s']:.1f} | "
            f"{r['bf16_vs_fp32']:.2f}x | {ref_s} | {ratio} | {comp} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all four)")
    p.add_argument("--setups", default="small_cnn,resnet18", help="small_cnn, resnet18 (comma-separated)")
    p.add_argument(
        "--compile-methods",
        default="idfd",
        help="methods also timed with train.compile=true (comma-separated; '' for none)",
    )
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--batch-size", type=int, default=None, help="default: the packaged config's")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternate all sides this often")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: CPU count)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--smoke", action="store_true", help="digits, tiny sizes, no compile: checks the script runs")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every side")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch  # after argparse: --help stays fast

    from deepclust.bench import (
        bench_throughput,
        machine_info,
        stamp_record,
        write_record,
    )

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    setups = ["smoke"] if a.smoke else [s.strip() for s in a.setups.split(",") if s.strip()]
    compile_methods = [] if a.smoke else [m.strip() for m in a.compile_methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS] + [s for s in setups if s not in SETUPS]
    if bad:
        print(f"cpu_precision.py: error: unknown method or setup: {', '.join(bad)}", file=sys.stderr)
        return 2
    warmup, windows, steps, rounds = (1, 1, 1, 1) if a.smoke else (a.warmup, a.windows, a.steps, a.rounds)
    batch = 32 if a.smoke and a.batch_size is None else a.batch_size
    workers = 0 if a.smoke and a.workers is None else a.workers
    out_dir = Path(a.out_dir)
    rows = []
    tag = None
    for setup in setups:
        for method in methods:
            cfg = setup_config(method, setup, a.data_dir, batch, list(a.overrides))
            start = machine_info(torch.device("cpu"))
            tag = cpu_tag(start["cpu_bf16_flags"])
            date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            rec = bench_throughput(
                cfg,
                warmup,
                windows,
                steps,
                workers,
                not a.no_reference,
                rounds,
                variants=variants(method, compile_methods),
            )
            stamp_record(
                rec,
                start,
                "benchmarks/cpu_precision.py",
                argv if argv is not None else sys.argv[1:],
                date,
                onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
            )
            rec["setup"] = setup
            path = write_record(rec, out_dir / f"{method}_{setup}_{tag}.json")
            rows.append(summary_row(rec, setup))
            print(f"written to {path}")
    if tag is not None:
        summary = {
            "benchmark": "cpu_precision",
            "rows": rows,
            "machine": start,
            "command": " ".join(
                ["python", "benchmarks/cpu_precision.py", *(argv if argv is not None else sys.argv[1:])]
            ),
        }
        write_record(summary, out_dir / f"summary_{tag}.json")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
