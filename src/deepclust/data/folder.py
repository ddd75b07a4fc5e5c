"""Image folders read into memory with Pillow: ``folder:PATH``, ImageNet-10/-Dogs, Tiny-ImageNet.

Images are converted to RGB (or kept grayscale when every image is grayscale) and resized
straight to ``image_size`` x ``image_size`` (bilinear, antialiased; no crop), as CC's ImageNet
pipelines do. Files with an image extension that Pillow cannot read are skipped and named in
one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from deepclust.data.base import ImageData, check_split
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "FOLDER_SPLITS",
    "IMAGE_EXTENSIONS",
    "IMAGENET10_CLASSES",
    "IMAGENET_DOGS_CLASSES",
    "TINY_IMAGENET_SPLITS",
    "load_folder",
    "load_imagenet_subset",
    "load_tiny_imagenet",
    "decode_image",
    "list_image_files",
    "read_image_files",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
FOLDER_SPLITS = ("train", "test", "train+test")
TINY_IMAGENET_SPLITS = ("train", "val", "test", "train+val")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_DEFAULT_MIXED_SIZE = 64
_PROGRESS_MIN = 500

# wnid -> readable name, in label order (evaluation.md section 3; the wnids are authoritative).
IMAGENET10_CLASSES: dict[str, str] = {
    "n02056570": "king penguin",
    "n02085936": "Maltese dog",
    "n02128757": "snow leopard",
    "n02690373": "airliner",
    "n02692877": "airship",
    "n03095699": "container ship",
    "n04254680": "soccer ball",
    "n04285008": "sports car",
    "n04467665": "trailer truck",
    "n07747607": "orange",
}
IMAGENET_DOGS_CLASSES: dict[str, str] = {
    "n02085936": "Maltese dog",
    "n02086646": "Blenheim spaniel",
    "n02088238": "basset",
    "n02091467": "Norwegian elkhound",
    "n02097130": "giant schnauzer",
    "n02099601": "golden retriever",
    "n02101388": "Brittany spaniel",
    "n02101556": "clumber",
    "n02102177": "Welsh springer spaniel",
    "n02105056": "groenendael",
    "n02105412": "kelpie",
    "n02105855": "Shetland sheepdog",
    "n02107142": "Doberman",
    "n02110958": "pug",
    "n02112137": "chow",
}


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def _list_files(root: Path) -> list[Path]:
    """All non-hidden files under root, sorted by relative path."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _probe(path: Path) -> tuple[tuple[int, int], str] | None:
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception:  # noqa: BLE001 - any reader failure means "skip and report"
        return None


def probe_folder(
    root: Path, files: Sequence[Path], n: int = 512
) -> tuple[dict[int, tuple[tuple[int, int], str] | None], int, int]:
    """Header-read a seeded sample of ``n`` of ``files``: (the probes by file index, None where
    unreadable; channels, 1 when every readable sample is grayscale, else 3; the native side,
    the size all samples share when they are square and equal, else the mixed-size default).
    DataError when none of them can be read."""
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(files), size=min(n, len(files)), replace=False))
    probes = {int(i): _probe(files[int(i)]) for i in pick}
    ok = [p for p in probes.values() if p is not None]
    if not ok:
        raise DataError(f"none of the {len(pick)} sampled image files under {root} could be read; check the files")
    channels = 1 if all(m in _GRAY_MODES for _, m in ok) else 3
    sizes = {s for s, _ in ok}
    w, h = next(iter(sizes))
    return probes, channels, w if len(sizes) == 1 and w == h else _DEFAULT_MIXED_SIZE


def _decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray | None:
    """Pixels (H, W) or (H, W, 3) of one file in ``mode``, resized to size=(W, H); None if unreadable."""
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft(mode, size)  # let libjpeg downscale by a power of two first
            im = im.convert(mode)
            if size is not None and im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception:  # noqa: BLE001
        return None


def decode_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray | None:
    """Pixels of one file converted to ``mode`` ("L" or "RGB") and resized to size=(W, H); None if unreadable."""
    return _decode(path, mode, size)


def list_image_files(root: Path) -> list[Path]:
    """The image files under an existing folder, sorted by relative path; DataError when there are none.

    Files without an image extension are ignored (and counted in an info line).
    """
    if not root.exists():
        raise DataError(f"image folder not found: {root}; pass folder:PATH with an existing folder of images")
    if not root.is_dir():
        hint = f"; use npz:{root} for an .npz file" if root.suffix.lower() == ".npz" else ""
        raise DataError(f"{root} is not a folder; folder:PATH expects a directory of images{hint}")
    all_files = _list_files(root)
    if not all_files:
        raise DataError(
            f"image folder {root} is empty; "
            f"put image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it or in class sub-folders"
        )
    files = [f for f in all_files if _is_image(f)]
    if not files:
        exts = sorted({f.suffix.lower() or "(none)" for f in all_files})
        raise DataError(
            f"image folder {root} has {len(all_files)} file(s) but no images "
            f"(extensions found: {', '.join(exts[:10])}); "
            f"supported: {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    if len(files) < len(all_files):
        logger.info("%s: ignored %d file(s) without an image extension", root, len(all_files) - len(files))
    return files


def _map(fn, items: Sequence, desc: str) -> list:
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(fn, items, chunksize=64)
        return list(tqdm(it, total=len(items), desc=desc, disable=len(items) <= _PROGRESS_MIN, leave=False))


def _warn_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:20]) + (f", ... and {len(skipped) - 20} more" if len(skipped) > 20 else "")
        logger.warning("skipped %d unreadable image file(s) in %s: %s", len(skipped), where, shown)


def read_image_files(
    files: Sequence[Path],
    root: Path,
    image_size: int | None = None,
    mode: str | None = None,
    desc: str = "reading images",
) -> tuple[torch.Tensor, list[int]]:
    """Read image files into uint8 (N, C, H, W); returns the tensor and the kept positions.

    ``mode`` None picks "L" when every image is grayscale, else "RGB". ``image_size`` None keeps
    the common size, or resizes to 64 when sizes differ. Unreadable files are skipped with one
    warning; none readable is a DataError.
    """
    files = list(files)
    skipped: list[str] = []
    keep = list(range(len(files)))
    target: tuple[int, int] | None = (image_size, image_size) if image_size is not None else None
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    if mode is None or target is None:
        probes = _map(_probe, files, desc=f"{desc} (headers)")
        keep = [i for i, p in enumerate(probes) if p is not None]
        skipped = [files[i].relative_to(root).as_posix() for i, p in enumerate(probes) if p is None]
        if not keep:
            _warn_skipped(skipped, str(root))
            raise DataError(f"none of the {len(files)} image files under {root} could be read; check the files")
        if mode is None:
            mode = "L" if all(probes[i][1] in _GRAY_MODES for i in keep) else "RGB"
        if target is None:
            sizes = {probes[i][0] for i in keep}
            if len(sizes) == 1:
                target = next(iter(sizes))
            else:
                target = (_DEFAULT_MIXED_SIZE, _DEFAULT_MIXED_SIZE)
                logger.info("%s: images have %d different sizes; resizing all to %dx%d", root, len(sizes), *target)
    arrays = _map(lambda i: _decode(files[i], mode, target), keep, desc=desc)
    kept = [i for i, a in zip(keep, arrays, strict=True) if a is not None]
    skipped += [files[i].relative_to(root).as_posix() for i, a in zip(keep, arrays, strict=True) if a is None]
    _warn_skipped(sorted(skipped), str(root))
    if not kept:
        raise DataError(f"none of the {len(files)} image files under {root} could be read; check the files")
    w, h = target
    c = 1 if mode == "L" else 3
    out = np.empty((len(kept), h, w, c), dtype=np.uint8)
    j = 0
    for a in arrays:
        if a is not None:
            out[j] = a.reshape(h, w, c)
            j += 1
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), kept


def load_folder(path: str | Path, split: str = "train", image_size: int | None = None) -> ImageData:
    """``folder:PATH``: labels from sub-folder names (sorted) when every image is in one, else -1.

    A folder has no official split: train, test and train+test all give every image.
    """
    root = Path(path).expanduser().absolute()
    name = f"folder:{root}"
    check_split(name, split, FOLDER_SPLITS)
    files = list_image_files(root)
    rel = [f.relative_to(root) for f in files]
    labelled = all(len(r.parts) >= 2 for r in rel)
    if not labelled and any(len(r.parts) >= 2 for r in rel):
        logger.info("%s: some images sit directly in the folder, so sub-folders are not used as labels", root)
    images, kept = read_image_files(files, root, image_size=image_size, desc=name)
    paths = [rel[i].as_posix() for i in kept]
    if labelled:
        classes = sorted({rel[i].parts[0] for i in kept})
        index = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([index[rel[i].parts[0]] for i in kept], dtype=torch.int64)
    else:
        classes = []
        labels = torch.full((len(kept),), -1, dtype=torch.int64)
    logger.info("loaded %s: %d images, %d classes, shape %s", name, len(kept), len(classes), tuple(images.shape[1:]))
    return ImageData(images=images, labels=labels, classes=classes, name=name, split=split, paths=paths)


def load_imagenet_subset(
    name: str, wnids: dict[str, str], data_dir: Path, split: str = "train", image_size: int | None = None
) -> ImageData:
    """ImageNet-10 / ImageNet-Dogs: every ImageNet training image of the listed wnids.

    Looks for ``imagenet/train/<wnid>/`` (an ImageNet train folder), else ``<name>/train/<wnid>/``
    or ``<name>/<wnid>/`` (a copy of the subset) under ``data_dir``. The only split is the whole
    set; ``train+test`` is accepted as the same images. Default image_size 96.
    """
    check_split(name, split, ("train", "train+test"))
    size = 96 if image_size is None else image_size
    candidates = [data_dir / "imagenet" / "train", data_dir / name / "train", data_dir / name]
    root = next((c for c in candidates if all((c / w).is_dir() for w in wnids)), None)
    if root is None:
        partial = next((c for c in candidates if any((c / w).is_dir() for w in wnids)), None)
        if partial is not None:
            missing = [w for w in wnids if not (partial / w).is_dir()]
            raise DataError(
                f"dataset {name!r}: {len(missing)} of {len(wnids)} class folders missing under {partial} "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                "it needs every wnid in evaluation.md section 3"
            )
        first = next(iter(wnids))
        raise DataError(
            f"dataset {name!r} not found under {data_dir}: "
            "expected an ImageNet train folder imagenet/train/<wnid>/*.JPEG "
            f"(e.g. imagenet/train/{first}/) or {name}/<wnid>/; pass --data-dir or set DEEPCLUST_DATA"
        )
    files: list[Path] = []
    labels_list: list[int] = []
    counts: dict[str, int] = {}
    for k, w in enumerate(wnids):
        fs = sorted((f for f in (root / w).iterdir() if f.is_file() and _is_image(f)), key=lambda p: p.name)
        counts[w] = len(fs)
        files += fs
        labels_list += [k] * len(fs)
    empty = [w for w, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"dataset {name!r}: class folders without images under {root}: {', '.join(empty)}")
    images, kept = read_image_files(files, root, image_size=size, mode="RGB", desc=name)
    labels = torch.tensor([labels_list[i] for i in kept], dtype=torch.int64)
    expected = 1300 * len(wnids)
    logger.info(
        "%s: found %d images in %d classes under %s (the papers use %d)", name, len(kept), len(wnids), root, expected
    )
    if len(kept) != expected:
        logger.warning(
            "%s: found %d images, not the %d of the standard set; results are not directly comparable",
            name,
            len(kept),
            expected,
        )
    paths = [files[i].relative_to(root).as_posix() for i in kept]
    return ImageData(images=images, labels=labels, classes=list(wnids.values()), name=name, split=split, paths=paths)


def _tiny_part(root: Path, part: str, wnids: list[str], size: int) -> ImageData:
    index = {w: k for k, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if part == "train":
        for w in wnids:
            d = root / "train" / w / "images"
            if not d.is_dir():
                raise DataError(f"tiny-imagenet: missing {d}; expected tiny-imagenet-200/train/<wnid>/images/*.JPEG")
            fs = sorted(f for f in d.iterdir() if _is_image(f))
            files += fs
            labels += [index[w]] * len(fs)
    else:
        d = root / part / "images"
        if not d.is_dir():
            raise DataError(f"tiny-imagenet: missing {d}; expected tiny-imagenet-200/{part}/images/*.JPEG")
        files = sorted(f for f in d.iterdir() if _is_image(f))
        if part == "val":
            ann = root / "val" / "val_annotations.txt"
            if not ann.is_file():
                raise DataError(f"tiny-imagenet: missing {ann}; the val split needs its annotation file")
            table = {}
            for line in ann.read_text().splitlines():
                cols = line.split("\t")
                if len(cols) >= 2:
                    table[cols[0]] = cols[1]
            unknown = [f.name for f in files if table.get(f.name) not in index]
            if unknown:
                logger.warning(
                    "tiny-imagenet: %d val images have no known wnid in %s (label -1), e.g. %s",
                    len(unknown),
                    ann,
                    unknown[0],
                )
            labels = [index.get(table.get(f.name, ""), -1) for f in files]
        else:
            labels = [-1] * len(files)
    if not files:
        raise DataError(f"tiny-imagenet: no images found for split {part!r} under {root}")
    images, kept = read_image_files(files, root, image_size=size, mode="RGB", desc=f"tiny-imagenet {part}")
    lab = torch.tensor([labels[i] for i in kept], dtype=torch.int64)
    return ImageData(
        images=images,
        labels=lab,
        classes=list(wnids) if part != "test" else [],
        name="tiny-imagenet",
        split=part,
        paths=[files[i].relative_to(root).as_posix() for i in kept],
    )


def load_tiny_imagenet(data_dir: Path, split: str = "train", image_size: int | None = None) -> ImageData:
    """Tiny-ImageNet from ``tiny-imagenet-200/`` (classes are the sorted wnids; default size 64).

    Splits: train (100,000), val (10,000, labels from val/val_annotations.txt), test (no
    labels) and train+val.
    """
    from deepclust.data.base import concat

    check_split("tiny-imagenet", split, TINY_IMAGENET_SPLITS)
    root = data_dir / "tiny-imagenet-200"
    if not root.is_dir():
        raise DataError(
            f"dataset 'tiny-imagenet' not found under {data_dir}: "
            "expected tiny-imagenet-200/ (with wnids.txt, train/, val/) "
            "from http://cs231n.stanford.edu/tiny-imagenet-200.zip; pass --data-dir or set DEEPCLUST_DATA"
        )
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()})
    else:
        wnids = sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) if (root / "train").is_dir() else []
    if not wnids:
        raise DataError(f"tiny-imagenet: no classes found in {root}: expected wnids.txt or train/<wnid>/ folders")
    size = 64 if image_size is None else image_size
    parts = split.split("+")
    datas = [_tiny_part(root, p, wnids, size) for p in parts]
    return datas[0] if len(datas) == 1 else concat(datas, split)
