"""k-means speed: deepclust's against scikit-learn's (and faiss's when installed).

    python benchmarks/kmeans_speed.py                                  # 60,000 x 128 blobs, k 10
    python benchmarks/kmeans_speed.py --features fashion-mnist --data-dir ../shared/data

Same float32 features, same k, n_init, max_iter, tol and seed for every library
(scikit-learn: ``algorithm="lloyd"``, k-means++ init; faiss: its random init, fixed
iterations). Wall time is the median of ``--repeats`` runs after one untimed warm-up of
deepclust's; inertia is reported by each library and recomputed in float64 from its labels and
centres. Writes ``benchmarks/results/kmeans/kmeans_<features>_<n>x<dim>_k<k>_<device>[_<tag>].json``
with the machine, load average at start and end, the command and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path

from deepclust.bench import bench_kmeans, kmeans_features, machine_info, print_kmeans, stamp_record, write_record
from deepclust.engine.device import resolve_device

RESULTS = Path(__file__).resolve().parent / "results" / "kmeans"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", default="blobs", help="blobs | fashion-mnist | FILE.npy")
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--n-init", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)

    dev = resolve_device(a.device)
    device = str(dev)
    x, desc = kmeans_features(a.features, a.n, a.dim, a.k, a.seed, a.data_dir)
    start = machine_info(dev)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rec = {
        "benchmark": "kmeans",
        "features": desc,
        **bench_kmeans(x, a.k, a.n_init, a.max_iter, a.tol, a.seed, a.repeats, device),
    }
    stamp_record(rec, start, "benchmarks/kmeans_speed.py", argv if argv is not None else sys.argv[1:], date)
    kind = re.sub(r"[^A-Za-z0-9-]+", "-", Path(a.features).stem)
    name = f"kmeans_{kind}_{rec['n']}x{rec['dim']}_k{a.k}_{device.split(':')[0]}"
    path = write_record(rec, RESULTS / f"{name}{'_' + a.tag if a.tag else ''}.json")
    print_kmeans(rec)
    print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
