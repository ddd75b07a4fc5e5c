"""Build ``glyphs16``: 9,000 16x16 grayscale digit images rendered from the DejaVu fonts.

    python benchmarks/make_glyphs.py --out data/glyphs16.npz [--n 9000] [--seed 0]

``--fonts matplotlib`` draws the same way from ten other faces (STIX and Computer Modern, which
matplotlib ships) instead: ``glyphs16-tune``, a set to tune glyph views on without touching the
held-out faces.

A held-out check for the data-kind defaults (deepclust/presets.py): small grayscale digit
glyphs like USPS, which the defaults were never tuned on. Each image is one digit 0-9 drawn
in one of the DejaVu faces installed by Debian's ``fonts-dejavu-core`` / ``fonts-dejavu-extra``
(``/usr/share/fonts/truetype/dejavu``), with a random size, stroke width, rotation (+-15
degrees), shear, offset and blur, then scaled to fill a 16x16 box as USPS digits do. Classes
are balanced. The layout is the npz one of ``../shared/data`` (``images`` uint8 (N, 16, 16),
``labels``, ``classes``), so ``deepclust train --data npz:data/glyphs16.npz`` reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# A tuning set disjoint from the held-out faces: matplotlib's own STIX and Computer Modern text
# faces (its DejaVu copies, symbol faces and faces without the ten digits left out).
TUNE_FONTS = (
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",
)


def font_files(kind: str) -> list[Path]:
    """``dejavu``: the held-out set's faces; ``matplotlib``: TUNE_FONTS from matplotlib's data."""
    if kind == "dejavu":
        return sorted(FONT_DIR.glob("*.ttf"))
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / f for f in TUNE_FONTS if (folder / f).is_file()]


def render(digit: int, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> np.ndarray:
    """One 16x16 uint8 glyph (white on black)."""
    big = Image.new("L", (64, 64), 0)
    d = ImageDraw.Draw(big)
    stroke = int(rng.integers(0, 3))
    d.text((32, 32), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    shear = rng.uniform(-0.25, 0.25)
    big = big.transform(big.size, Image.Transform.AFFINE, (1, shear, -shear * 32, 0, 1, 0), Image.Resampling.BILINEAR)
    big = big.rotate(rng.uniform(-15, 15), Image.Resampling.BILINEAR)
    box = big.getbbox() or (0, 0, 64, 64)
    glyph = big.crop(box)
    w, h = glyph.size
    side = max(w, h)
    square = Image.new("L", (side, side), 0)
    square.paste(
        glyph,
        (
            (side - w) // 2 + int(rng.integers(-side // 10, side // 10 + 1)),
            (side - h) // 2 + int(rng.integers(-side // 10, side // 10 + 1)),
        ),
    )
    small = square.resize((16, 16), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        small = small.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    arr = np.asarray(small, dtype=np.float32)
    arr = arr / max(arr.max(), 1.0) * 255.0
    return np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/glyphs16.npz")
    p.add_argument("--n", type=int, default=9000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fonts",
        choices=("dejavu", "matplotlib"),
        default="dejavu",
        help="dejavu: the held-out glyphs16; matplotlib: a tuning set of other faces (glyphs16-tune)",
    )
    a = p.parse_args(argv)
    fonts = font_files(a.fonts)
    if not fonts:
        where = (
            f"under {FONT_DIR}; install Debian's fonts-dejavu-core" if a.fonts == "dejavu" else "in matplotlib's data"
        )
        print(f"no {a.fonts} fonts {where}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(a.seed)
    labels = np.arange(a.n) % 10
    rng.shuffle(labels)
    faces = [ImageFont.truetype(str(f), size) for f in fonts for size in (36, 44)]
    images = np.stack([render(int(y), faces[int(rng.integers(len(faces)))], rng) for y in labels])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, images=images, labels=labels.astype(np.int64), classes=np.array([str(i) for i in range(10)])
    )
    print(f"wrote {out}: {len(images)} images 16x16 from {len(fonts)} fonts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
