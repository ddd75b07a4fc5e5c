"""benchmarks/cpu_precision.py --smoke: the one command that writes the float32 / bf16 / reference
records runs end to end on the bundled digits (seconds), and its records hold what the README
quotes from them: every side's images/s, the ratios, the CPU's model, bf16 flags and what
``train.amp=auto`` picks there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_precision_smoke_writes_records(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "cpu_precision.py"),
        "--smoke",
        "--methods",
        "idfd,secu",
        "--out-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    records = sorted(tmp_path.glob("*_smoke_*.json"))
    assert [p.name.split("_")[0] for p in records] == ["idfd", "secu"]
    for path in records:
        rec = json.loads(path.read_text())
        assert set(rec["variants"]) == {"fp32", "bf16"}
        fp32, bf16, ref = rec["variants"]["fp32"], rec["variants"]["bf16"], rec["reference"]
        assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")  # one run, both precisions
        assert rec["deepclust"] == fp32 and fp32["vs_first"] == 1.0
        assert bf16["vs_first"] == pytest.approx(bf16["images_per_s"] / fp32["images_per_s"], rel=1e-2)
        assert bf16["speedup"] == pytest.approx(bf16["images_per_s"] / ref["images_per_s"], rel=1e-2)
        m = rec["machine"]
        assert m["cpu_model"] and isinstance(m["cpu_bf16_flags"], list)
        assert m["cpu_auto_amp"]["precision"] in ("bf16", "fp32") and m["cpu_auto_amp"]["reason"]
    summary = json.loads(next(tmp_path.glob("summary_*.json")).read_text())
    assert [r["method"] for r in summary["rows"]] == ["idfd", "secu"]
    assert "| idfd | smoke |" in done.stdout
