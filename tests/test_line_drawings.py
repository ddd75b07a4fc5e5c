"""``data.strokes``: line drawings against filled shapes, against scipy.ndimage's binary erosion,
on drawn shapes, and on the real sets whose flag ``peek``'s table states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from deepclust.data import load_dataset
from deepclust.data.peek import peek, shape_of
from deepclust.data.strokes import STROKE_THRESHOLD, is_line_drawing, stroke_fraction
from deepclust.presets import kind_defaults

def _reference(images: np.ndarray) -> float:
    """Mean over images with a foreground of 1 - |erode(fg)| / |fg|; fg = |x - median(border)| > 64,
    the erosion 3x3 with the outside counted as foreground (scipy's border_value=1)."""
    vals = []
    for x in images.astype(np.float64):
        border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
        fg = np.abs(x - np.sort(border)[(len(border) - 1) // 2]) > 0.25 * 255  # torch's lower median
        if fg.sum() == 0:
            continue
        eroded = ndimage.binary_erosion(fg, structure=np.ones((3, 3)), border_value=1)
        vals.append(1 - eroded.sum() / fg.sum())
    return float(np.mean(vals))


def _drawn(kind: str, n: int, rng: np.random.Generator, invert: bool = False) -> np.ndarray:
    out = []
    for _ in range(n):
        im = Image.new("L", (24, 24), 0)
        d = ImageDraw.Draw(im)
        a, b = int(rng.integers(2, 6)), int(rng.integers(18, 22))
        if kind == "line":
            d.ellipse((a, a, b, b), outline=255, width=int(rng.integers(1, 3)))
            d.line((a, b, b, a), fill=255, width=1)
        else:
            d.rectangle((a, a + 2, b, b), fill=255)
        arr = np.asarray(im)
        out.append(255 - arr if invert else arr)
    return np.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stroke_fraction_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    imgs = (rng.random((20, 14, 11)) < rng.uniform(0.2, 0.8)).astype(np.uint8) * 255
    imgs = np.where(rng.random(imgs.shape) < 0.1, rng.integers(0, 256, imgs.shape), imgs).astype(np.uint8)
    assert stroke_fraction(imgs) == pytest.approx(_reference(imgs), abs=1e-6)
    # a list of arrays (a folder's decoded files) gives the same
    assert stroke_fraction(list(imgs)) == pytest.approx(_reference(imgs), abs=1e-6)


def test_lines_and_filled_shapes_either_polarity() -> None:
    rng = np.random.default_rng(0)
    for invert in (False, True):
        assert is_line_drawing(_drawn("line", 30, rng, invert)) is True
        assert is_line_drawing(_drawn("fill", 30, rng, invert)) is False
    assert is_line_drawing(np.zeros((4, 10, 10), np.uint8)) is None  # no foreground: cannot tell
    assert is_line_drawing([]) is None


def test_peek_tells_an_npz_and_a_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "lines.npz", images=_drawn("line", 40, rng))
    np.savez(tmp_path / "fill.npz", images=_drawn("fill", 40, rng)[..., None])  # NHWC
    assert peek(f"npz:{tmp_path / 'lines.npz'}").strokes is True
    assert peek(f"npz:{tmp_path / 'fill.npz'}").strokes is False
    (tmp_path / "f").mkdir()
    for i, a in enumerate(_drawn("fill", 12, rng)):
        Image.fromarray(a).save(tmp_path / "f" / f"{i}.png")
    assert peek(f"folder:{tmp_path / 'f'}").strokes is False
    big = rng.integers(0, 255, (3, 40, 40), dtype=np.uint8)  # above 32 px: not glyph-like, not read
    assert shape_of((3, 1, 40, 40), big).strokes is None
    # the glyph preset's stroke views follow the flag, for SeCu and CDC only
    lines, fill = shape_of((40, 1, 24, 24), _drawn("line", 40, rng)), shape_of((40, 1, 24, 24), _drawn("fill", 40, rng))
    assert kind_defaults("cdc", "glyph", lines)["augment"]["stroke_p"] > 0
    assert "stroke_p" not in kind_defaults("cdc", "glyph", fill)["augment"]
    assert "stroke_p" not in kind_defaults("idfd", "glyph", lines)["augment"]


def test_the_known_table_agrees_with_the_pixels_digits() -> None:
    digits = load_dataset("digits", "train+test", None).images
    assert stroke_fraction(digits) > STROKE_THRESHOLD + 0.1 and peek("digits").strokes is True


def test_the_known_table_agrees_with_the_pixels_fashion_mnist(shared_data: Path) -> None:
    fm = load_dataset("fashion-mnist", "test", str(shared_data)).images
    assert stroke_fraction(fm) < STROKE_THRESHOLD - 0.1 and peek("fashion-mnist").strokes is False
