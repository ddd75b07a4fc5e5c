"""The standard benchmarks: digits, CIFAR-10/100(-20), Fashion-MNIST and STL-10.

Files are read from the data directory in torchvision's layouts (or the local npz copies
described in the shared data README). When a dataset is missing and the machine can reach the
dataset's server, torchvision's ``download=True`` fetches it into the data directory; set
``DEEPCLUST_DOWNLOAD=0`` to never download.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from deepclust.data.base import ImageData, check_split, concat, resize_images
from deepclust.data.npz import read_npz
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "CIFAR_SPLITS",
    "STL10_SPLITS",
    "cifar100_fine_to_coarse",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_fashion_mnist",
    "load_stl10",
]

CIFAR_SPLITS = ("train", "test", "train+test")
DIGITS_SPLITS = ("train", "test", "train+test")
STL10_SPLITS = ("train", "test", "unlabeled", "train+test", "train+unlabeled")
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
_WHERE = "pass --data-dir or set DEEPCLUST_DATA"


def _download_allowed(url: str) -> bool:
    """True unless DEEPCLUST_DOWNLOAD=0, and the dataset's host answers within a few seconds."""
    if os.environ.get("DEEPCLUST_DOWNLOAD", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=3):
            return True
    except OSError:
        return False


def _download(what: str, url: str, data_dir: Path, fetch: Callable[[], object]) -> bool:
    """Run torchvision's download into data_dir when allowed; True on success."""
    if not _download_allowed(url):
        return False
    logger.info("%s not found under %s; downloading it with torchvision from %s", what, data_dir, url)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fetch()
        return True
    except Exception as exc:  # noqa: BLE001 - a failed download falls back to the "not found" error
        logger.warning("downloading %s failed: %s", what, exc)
        return False


def _finish(data: ImageData, image_size: int | None) -> ImageData:
    if image_size is not None and data.image_size != (image_size, image_size):
        data.images = resize_images(data.images, image_size)
    logger.info(
        "loaded %r split %r: %d images of shape %s", data.name, data.split, data.n_samples, tuple(data.images.shape[1:])
    )
    return data


def load_digits(data_dir: Path | None = None, split: str = "train", image_size: int | None = None) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), C = 1.

    Pixel values 0..16 become uint8 via round(v * 255 / 16). The set has no official split:
    train, test and train+test all give the same 1,797 images.
    """
    check_split("digits", split, DIGITS_SPLITS)
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    data = ImageData(
        images=torch.from_numpy(np.ascontiguousarray(imgs)),
        labels=torch.from_numpy(d.target.astype(np.int64)),
        classes=[str(i) for i in range(10)],
        name="digits",
        split=split,
    )
    return _finish(data, image_size)


# ---------------------------------------------------------------- CIFAR-10


def _cifar10_exact(data_dir: Path, part: str) -> ImageData:
    from torchvision.datasets import CIFAR10

    # torchvision unpickles the python batches only after their md5s matched the official
    # release's (CIFAR10._check_integrity; RuntimeError otherwise): no other file is unpickled.
    try:
        ds = CIFAR10(str(data_dir), train=(part == "train"), download=False)
    except RuntimeError:
        raise DataError(
            f"cifar-10-batches-py under {data_dir} is incomplete or corrupted (torchvision's checksum failed); "
            "replace it with the official cifar-10-python.tar.gz contents"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return ImageData(images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes), "cifar10", part)


def _cifar10_jpeg(path: Path, part: str) -> ImageData:
    images, labels, classes = read_npz(path)
    return ImageData(images, labels, classes, "cifar10-jpeg", part)


def load_cifar10(
    data_dir: Path, split: str = "train", image_size: int | None = None, jpeg_only: bool = False
) -> ImageData:
    """CIFAR-10 from ``cifar-10-batches-py/`` (exact; preferred), else the JPEG copy
    ``cifar10/{train,test}.jpeg.npz`` (recorded as ``cifar10-jpeg``), else a torchvision download.
    """
    name = "cifar10-jpeg" if jpeg_only else "cifar10"
    check_split(name, split, CIFAR_SPLITS)
    parts = split.split("+")
    exact = data_dir / "cifar-10-batches-py"
    jpegs = {p: data_dir / "cifar10" / f"{p}.jpeg.npz" for p in parts}
    if not jpeg_only and exact.is_dir():
        loader: Callable[[str], ImageData] = lambda p: _cifar10_exact(data_dir, p)  # noqa: E731
    elif all(f.is_file() for f in jpegs.values()):
        if not jpeg_only:
            logger.info("cifar10: reading the JPEG copy under %s (recorded as 'cifar10-jpeg')", data_dir / "cifar10")
        loader = lambda p: _cifar10_jpeg(jpegs[p], p)  # noqa: E731
    elif not jpeg_only and _download(
        "cifar10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        data_dir,
        lambda: [
            __import__("torchvision").datasets.CIFAR10(str(data_dir), train=t, download=True) for t in (True, False)
        ],
    ):
        loader = lambda p: _cifar10_exact(data_dir, p)  # noqa: E731
    else:
        missing = ", ".join(f"cifar10/{p}.jpeg.npz" for p, f in jpegs.items() if not f.is_file())
        if jpeg_only:
            raise DataError(f"dataset 'cifar10-jpeg' not found under {data_dir}: expected {missing}; {_WHERE}")
        raise DataError(
            f"dataset 'cifar10' not found under {data_dir}: expected cifar-10-batches-py/ (torchvision layout) "
            f"or {missing} (JPEG copy); {_WHERE}"
        )
    datas = [loader(p) for p in parts]
    data = datas[0] if len(datas) == 1 else concat(datas, split)
    return _finish(data, image_size)


# ---------------------------------------------------------------- CIFAR-100


def _official_md5s() -> dict[str, str]:
    """The md5 of each file of the official cifar-100-python.tar.gz, as torchvision lists them."""
    from torchvision.datasets import CIFAR100

    return {**dict(CIFAR100.train_list), **dict(CIFAR100.test_list), CIFAR100.meta["filename"]: CIFAR100.meta["md5"]}


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # NumPy's array reconstructor (numpy.core / numpy._core)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds NumPy arrays and plain containers only: every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:  # pickle.Unpickler's signature
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _RECONSTRUCT
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")


def _unpickle(path: Path) -> dict:
    """A CIFAR-100 python batch. These files are pickles, and unpickling runs code a crafted file
    carries: a file is read only after its md5 matched the official release's (the check
    torchvision's CIFAR100 makes; torchvision's own CIFAR10 reader checks its batches so too),
    and then with an unpickler that builds NumPy arrays and plain containers only."""
    from torchvision.datasets.utils import check_integrity

    if not path.is_file():
        raise DataError(f"cifar100: missing {path}; cifar-100-python/ must hold train, test and meta")
    md5 = _official_md5s().get(path.name)
    if md5 is None or not check_integrity(str(path), md5):
        raise DataError(
            f"cifar100: {path} is not the official file (its md5 differs); re-extract cifar-100-python.tar.gz"
        )
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"cifar100: cannot read {path} ({type(exc).__name__}); re-extract cifar-100-python.tar.gz"
        ) from None


def _read_cifar100(root: Path, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entry = _unpickle(root / part)
    try:
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
    except (KeyError, ValueError) as exc:
        raise DataError(
            f"cifar100: {root / part} lacks data/fine_labels/coarse_labels ({exc}); re-extract it"
        ) from None
    if not (len(data) == len(fine) == len(coarse)):
        raise DataError(f"cifar100: {root / part} has {len(data)} images but {len(fine)}/{len(coarse)} labels")
    return data, fine, coarse


def _cifar100_root(data_dir: Path, name: str = "cifar100") -> Path:
    root = data_dir / "cifar-100-python"
    if not root.is_dir() and not _download(
        "cifar100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        data_dir,
        lambda: __import__("torchvision").datasets.CIFAR100(str(data_dir), train=True, download=True),
    ):
        raise DataError(
            f"dataset {name!r} not found under {data_dir}: expected cifar-100-python/ (torchvision layout: "
            f"train, test, meta from cifar-100-python.tar.gz); {_WHERE}"
        )
    return root


def cifar100_fine_to_coarse(data_dir: Path, part: str = "train") -> list[int]:
    """The fine -> coarse label table derived from the pickles' fine_labels/coarse_labels."""
    _, fine, coarse = _read_cifar100(_cifar100_root(Path(data_dir)), part)
    return _derive_map(fine, coarse, part)


def _derive_map(fine: np.ndarray, coarse: np.ndarray, part: str) -> list[int]:
    table = np.full(int(fine.max()) + 1, -1, dtype=np.int64)
    table[fine] = coarse
    if (table[fine] != coarse).any():
        bad = int(fine[table[fine] != coarse][0])
        raise DataError(
            f"cifar100 {part}: fine class {bad} carries more than one coarse label; the pickles are inconsistent"
        )
    return table.tolist()


def load_cifar100(
    data_dir: Path, split: str = "train", image_size: int | None = None, coarse: bool = False
) -> ImageData:
    """CIFAR-100 (100 fine classes) or CIFAR-100-20 (``coarse=True``: the 20 superclasses).

    Reads ``cifar-100-python/{train,test,meta}`` directly: the coarse labels come from the
    pickles' ``coarse_labels`` (torchvision exposes only the fine ones).
    """
    name = "cifar100-20" if coarse else "cifar100"
    check_split(name, split, CIFAR_SPLITS)
    root = _cifar100_root(data_dir, name)
    meta = _unpickle(root / "meta")
    key = "coarse_label_names" if coarse else "fine_label_names"
    if key not in meta:
        raise DataError(f"cifar100: {root / 'meta'} has no {key!r}; re-extract cifar-100-python.tar.gz")
    datas = []
    for part in split.split("+"):
        imgs, fine, crs = _read_cifar100(root, part)
        _derive_map(fine, crs, part)
        labels = crs if coarse else fine
        datas.append(ImageData(torch.from_numpy(imgs), torch.from_numpy(labels), list(meta[key]), name, part))
    data = datas[0] if len(datas) == 1 else concat(datas, split)
    return _finish(data, image_size)


# ---------------------------------------------------------------- Fashion-MNIST


def load_fashion_mnist(data_dir: Path, split: str = "train", image_size: int | None = None) -> ImageData:
    """Fashion-MNIST (28x28, C = 1) from ``fashion_mnist/{train,test}.npz`` or torchvision's
    ``FashionMNIST/raw/`` layout (both exact), else a torchvision download."""
    check_split("fashion-mnist", split, CIFAR_SPLITS)
    from torchvision.datasets import FashionMNIST

    parts = split.split("+")
    npzs = {p: data_dir / "fashion_mnist" / f"{p}.npz" for p in parts}

    def from_torchvision(p: str) -> ImageData:
        try:
            ds = FashionMNIST(str(data_dir), train=(p == "train"), download=False)
        except RuntimeError:
            raise DataError(
                f"FashionMNIST/raw under {data_dir} is incomplete; it needs the 4 idx-ubyte files"
            ) from None
        return ImageData(
            ds.data[:, None].contiguous(), ds.targets.to(torch.int64), list(ds.classes), "fashion-mnist", p
        )

    def from_npz(p: str) -> ImageData:
        images, labels, classes = read_npz(npzs[p])
        return ImageData(images, labels, classes, "fashion-mnist", p)

    if all(f.is_file() for f in npzs.values()):
        loader: Callable[[str], ImageData] = from_npz
    elif (data_dir / "FashionMNIST" / "raw").is_dir() or _download(
        "fashion-mnist",
        FashionMNIST.mirrors[0],
        data_dir,
        lambda: [FashionMNIST(str(data_dir), train=t, download=True) for t in (True, False)],
    ):
        loader = from_torchvision
    else:
        missing = ", ".join(f"fashion_mnist/{p}.npz" for p, f in npzs.items() if not f.is_file())
        raise DataError(
            f"dataset 'fashion-mnist' not found under {data_dir}: expected {missing} or FashionMNIST/raw/ "
            f"(torchvision layout); {_WHERE}"
        )
    datas = [loader(p) for p in parts]
    data = datas[0] if len(datas) == 1 else concat(datas, split)
    return _finish(data, image_size)


# ---------------------------------------------------------------- STL-10


def load_stl10(data_dir: Path, split: str = "train", image_size: int | None = None) -> ImageData:
    """STL-10 (96x96) from torchvision's ``stl10_binary/`` layout.

    Splits: train (5,000), test (8,000), unlabeled (100,000, labels -1), train+test and
    train+unlabeled (in that order).
    """
    check_split("stl10", split, STL10_SPLITS)
    from torchvision.datasets import STL10

    if not (data_dir / "stl10_binary").is_dir() and not _download(
        "stl10", STL10.url, data_dir, lambda: STL10(str(data_dir), split="test", download=True)
    ):
        raise DataError(
            f"dataset 'stl10' not found under {data_dir}: expected stl10_binary/ (torchvision layout: "
            f"train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin); {_WHERE}"
        )

    def part(p: str) -> ImageData:
        try:
            ds = STL10(str(data_dir), split=p, download=False)
        except RuntimeError:
            raise DataError(
                f"stl10_binary under {data_dir} is incomplete or corrupted (torchvision's checksum failed); "
                "re-extract stl10_binary.tar.gz"
            ) from None
        labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)
        classes = list(getattr(ds, "classes", None) or STL10_CLASSES) if bool((labels >= 0).any()) else []
        return ImageData(torch.from_numpy(np.ascontiguousarray(ds.data)), labels, classes, "stl10", p)

    parts = ["train", "test"] if split == "train+test" else [split]
    datas = [part(p) for p in parts]
    data = datas[0] if len(datas) == 1 else concat(datas, split)
    return _finish(data, image_size)
