"""Fault injection (issue #17): kill -9 a short training run at seeded random moments, inside
checkpoint writes and during the final evaluation, resume it each time, and compare with an
uninterrupted run; then a table of bad inputs with the line each produced and its exit status.

    python benchmarks/faults.py                       # 20 kills, the bad-input table, a record in results/faults/
    python benchmarks/faults.py --kills 3 --no-table  # what tests/integration/test_faults.py runs

Every training process runs through ``python benchmarks/faults.py child MARKERS -- ARGS``: the
deepclust CLI with two hooks that do not change what is computed: ``torch.save`` writes its
bytes in slow chunks after touching ``MARKERS/save-N`` (so a kill can land inside a checkpoint
write), and the final evaluation touches ``MARKERS/final-eval`` and waits a moment.

Figures: kills survived (the run finished after every kill and resume), checkpoints lost (after a
kill the checkpoint is missing, unreadable, corrupt or older than one seen before), runs whose
final weights differ from the uninterrupted run (bitwise), and ``metrics.jsonl`` inconsistencies
(lines missing, repeated or different from the uninterrupted run's).
"""

from __future__ import annotations

import argparse
import io as pyio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults"
sys.path.insert(0, str(ROOT / "src"))

log = logging.getLogger("faults")

RUN_ARGS = [
    "--method",
    "idfd",
    "--data",
    "digits",
    "--device",
    "cpu",
    "--batch-size",
    "256",
    "--seed",
    "0",
    "model.backbone=small_cnn",
    "model.width=8",
    "model.feature_dim=16",
    "data.image_size=8",
    "eval.n_init=1",
    "train.checkpoint_every=2",
    "train.progress=false",
]
EPOCHS = 5
KINDS = ("random", "checkpoint_write", "final_eval")


# ----- the child: the CLI with hooks ----------------------------------------------------------------------
def child(markers: Path, args: list[str]) -> int:
    import torch

    from deepclust.cli import main
    from deepclust.engine.trainer import Trainer

    real_save, real_eval = torch.save, Trainer.evaluate
    count = [0]

    def slow_save(obj: Any, fh: Any, *a: Any, **k: Any) -> None:
        buf = pyio.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        count[0] += 1
        (markers / f"save-{count[0]}").touch()
        step = max(1, len(data) // 8)
        for i in range(0, len(data), step):  # the same bytes, slowly: a kill can land mid-write
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(0.04)

    def marked_eval(self: Trainer, epoch: int):
        if epoch == self.cfg.train.epochs:
            (markers / "final-eval").touch()
            time.sleep(0.3)
        return real_eval(self, epoch)

    torch.save = slow_save
    Trainer.evaluate = marked_eval
    return main(args)


def _start(out: Path, markers: Path, mode: str, epochs: int) -> subprocess.Popen:
    shutil.rmtree(markers, ignore_errors=True)
    markers.mkdir(parents=True)
    if mode == "resume":
        cli = ["-q", "resume", str(out)]
    else:
        cli = [
            "-q",
            "train",
            *RUN_ARGS,
            "--epochs",
            str(epochs),
            "--out",
            str(out),
            *(["--overwrite"] if mode == "overwrite" else []),
        ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, __file__, "child", str(markers), "--", *cli],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_marker(proc: subprocess.Popen, markers: Path, pattern: str, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if list(markers.glob(pattern)):
            return True
        time.sleep(0.01)
    return False


def _kill(proc: subprocess.Popen, kind: str, rng: np.random.Generator, markers: Path, span: float) -> bool:
    """SIGKILL ``proc`` at a moment of ``kind``; False when it finished first."""
    if kind == "random":
        end = time.time() + rng.uniform(0.0, span)
        while time.time() < end and proc.poll() is None:
            time.sleep(0.01)
    elif kind == "checkpoint_write":
        if not _wait_marker(proc, markers, "save-*", span * 2):
            return False
        time.sleep(rng.uniform(0.0, 0.25))
    else:
        if not _wait_marker(proc, markers, "final-eval", span * 2):
            return False
        time.sleep(rng.uniform(0.0, 0.4))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _weights(out: Path) -> dict[str, Any]:
    from deepclust.engine import io

    return io.load_checkpoint(out)["model"]


def _metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _checkpoint_epoch(out: Path) -> int | None | str:
    """The checkpoint's epoch, None when there is none, "bad" when it does not load or verify."""
    from deepclust.engine import io
    from deepclust.errors import DeepClustError

    if not (out / "checkpoint.pt").is_file():
        return None
    try:
        return int(io.load_checkpoint(out)["epoch"])
    except DeepClustError:
        return "bad"


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fault_injection(work: Path, kills: int, seed: int, epochs: int = EPOCHS, kills_per_run: int = 4) -> dict[str, Any]:
    """Kill and resume runs until ``kills`` kills landed; compare each finished run with a straight one."""
    rng = np.random.default_rng(seed)
    ref = work / "uninterrupted"
    t0 = time.time()
    proc = _start(ref, work / "m-ref", "train", epochs)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {err.strip()[-500:]}")
    span = time.time() - t0  # one whole process, start-up included: random kills fall inside it
    ref_w, ref_m = _weights(ref), _metrics(ref)
    plan = list(rng.permutation([KINDS[i % 3] for i in range(kills)]))
    fig = {
        "kills": 0,
        "kills_survived": 0,
        "missed_moments": 0,
        "checkpoints_lost": 0,
        "runs": 0,
        "runs_with_different_weights": 0,
        "metrics_inconsistencies": 0,
        "by_kind": {k: 0 for k in KINDS},
        "events": [],
    }
    run = 0
    while plan and run < kills * 3:
        out, run = work / f"run{run}", run + 1
        last_epoch: int | None = None
        mode, landed = "train", 0
        while plan and landed < kills_per_run:
            kind = plan[0]
            proc = _start(out, work / "m", mode, epochs)
            killed = _kill(proc, kind, rng, work / "m", span)
            if not killed:
                proc.communicate()
                fig["missed_moments"] += 1
                if proc.returncode == 0:
                    break  # the run finished before this moment came: the kind goes to the next run
                raise RuntimeError(f"a run failed without a kill: {proc.stderr.read() if proc.stderr else ''}")
            plan.pop(0)
            landed += 1
            fig["kills"] += 1
            fig["by_kind"][kind] += 1
            epoch = _checkpoint_epoch(out)
            lost = epoch == "bad" or (last_epoch is not None and (epoch is None or epoch < last_epoch))
            fig["checkpoints_lost"] += int(lost)
            fig["events"].append(
                {
                    "run": run - 1,
                    "kind": kind,
                    "checkpoint_epoch": epoch,
                    "metrics_epochs": [m.get("epoch") for m in _metrics(out)],
                    "lost": bool(lost),
                }
            )
            if isinstance(epoch, int):
                last_epoch = epoch
            mode = "resume" if isinstance(epoch, int) else "overwrite"
        proc = _start(out, work / "m", mode, epochs)  # the last resume runs to the end
        _, err = proc.communicate()
        if proc.returncode != 0:
            fig["events"].append({"run": run - 1, "final_error": err.strip()[-300:]})
            continue
        fig["kills_survived"] += landed
        fig["runs"] += 1
        fig["runs_with_different_weights"] += int(not _same_weights(ref_w, _weights(out)))
        got = _metrics(out)
        fig["metrics_inconsistencies"] += sum(a != b for a, b in zip(got, ref_m, strict=False)) + abs(
            len(got) - len(ref_m)
        )
    fig["epochs"] = epochs
    fig["uninterrupted_process_s"] = round(span, 2)
    return fig


# ----- bad inputs ---------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this touches ``marker``: the code a crafted checkpoint carries (issue #30)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return Path.touch, (Path(self.marker),)


def _crafted_file(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped torch file whose unpickling would run the payload."""
    import torch

    torch.save({"method": "idfd", "model": {"w": torch.ones(2)}, "epoch": 1, "rng": _Payload(marker)}, path)
    return path


def _cli(
    args: list[str], env_extra: dict[str, str] | None = None, sigint_when: Path | None = None, python: str | None = None
) -> dict[str, Any]:
    """Run the CLI (or a Python snippet); ``sigint_when``: Ctrl-C once that file appears (training started)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-c", python] if python else [sys.executable, "-m", "deepclust", "-q", *args]
    # a job started in the background inherits SIGINT ignored, and Python then keeps it ignored:
    # give the child the default, so Python installs its KeyboardInterrupt handler
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    if sigint_when is not None:
        while not sigint_when.exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    lines = [x for x in err.strip().splitlines() if x and not x.startswith(("WARNING", "INFO"))]
    return {
        "exit": proc.returncode,
        "line": lines[-1] if lines else "",
        "stderr_lines": len(lines),
        "traceback": "Traceback" in err,
    }


def bad_input_table(work: Path) -> list[dict[str, Any]]:
    """Every bad input of the README's list and of issue #17's table: its line and exit status."""
    from deepclust.engine import io

    rng = np.random.default_rng(0)
    toy = work / "toy.npz"
    np.savez(toy, images=rng.integers(0, 256, (96, 8, 8), dtype=np.uint8), labels=rng.integers(0, 3, 96))
    (work / "empty").mkdir(exist_ok=True)
    (work / "corrupt").mkdir(exist_ok=True)
    (work / "corrupt" / "a.png").write_bytes(b"not an image")
    np.savez(work / "rank5.npz", images=np.zeros((4, 2, 8, 8, 3), np.uint8))
    base = [
        "train",
        "--method",
        "idfd",
        "--data",
        f"npz:{toy}",
        "--n-clusters",
        "3",
        "--device",
        "cpu",
        "--batch-size",
        "48",
        "model.width=4",
        "model.feature_dim=8",
        "eval.n_init=1",
    ]

    def fresh(name: str) -> str:
        shutil.rmtree(work / name, ignore_errors=True)
        return str(work / name)

    run = fresh("done")
    assert _cli([*base, "--epochs", "2", "--out", run])["exit"] == 0
    rows: list[tuple[str, Any]] = [
        ("missing path", lambda: _cli([*base[:4], f"npz:{work / 'nope.npz'}", *base[5:], "--out", fresh("o")])),
        ("empty folder", lambda: _cli([*base[:4], f"folder:{work / 'empty'}", *base[5:], "--out", fresh("o")])),
        ("corrupt image", lambda: _cli([*base[:4], f"folder:{work / 'corrupt'}", *base[5:], "--out", fresh("o")])),
        ("wrong array shape", lambda: _cli([*base[:4], f"npz:{work / 'rank5.npz'}", *base[5:], "--out", fresh("o")])),
        ("more clusters than images", lambda: _cli([*base, "--n-clusters", "500", "--out", fresh("o")])),
        ("unknown method", lambda: _cli(["train", "--method", "secuu", "--data", "digits", "--out", fresh("o")])),
        ("unknown dataset", lambda: _cli(["train", "--method", "idfd", "--data", "fashion-mnst", "--out", fresh("o")])),
        ("unknown config key", lambda: _cli([*base, "optim.lrr=0.1", "--out", fresh("o")])),
    ]
    for override in (
        "train.checkpoint_every=0",
        "eval.batch_size=0",
        "optim.lr=-1",
        "model.feature_dim=0",
        "model.width=0",
        "model.stem=foo",
        "train.eval_every=-1",
    ):
        rows.append((override, lambda o=override: _cli([*base, o, "--out", fresh("o")])))

    def damaged() -> dict[str, Any]:
        import struct
        import zipfile

        d = fresh("damaged")
        shutil.copytree(run, d)
        with zipfile.ZipFile(Path(d) / io.CHECKPOINT) as z:
            info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(Path(d) / io.CHECKPOINT, "r+b") as fh:
            fh.seek(info.header_offset + 26)
            n, m = struct.unpack("<HH", fh.read(4))
            fh.seek(info.header_offset + 30 + n + m + 8)
            fh.write(rng.bytes(32))
        return _cli(["resume", d, "train.epochs=3"])

    def killed_before_checkpoint() -> dict[str, Any]:
        d = fresh("dead")
        Path(d).mkdir()
        (Path(d) / io.CONFIG).write_text("method: idfd\n")
        (Path(d) / io.METRICS).write_text('{"epoch": 1, "train": {"loss": 1.0}}\n')
        return _cli([*base, "--epochs", "2", "--out", d])

    def full_disk() -> dict[str, Any]:
        mnt = work / "full"
        mnt.mkdir(exist_ok=True)
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
        ).returncode:
            return {"exit": None, "line": "not run: mounting a 64 KiB tmpfs needs root", "traceback": False}
        try:
            r = _cli(
                [
                    "train",
                    "--method",
                    "idfd",
                    "--data",
                    "digits",
                    "--device",
                    "cpu",
                    "--epochs",
                    "1",
                    "model.width=8",
                    "model.feature_dim=16",
                    "eval.n_init=1",
                    "--out",
                    str(mnt / "run"),
                ]
            )
            r["files_left"] = sorted(p.name for p in (mnt / "run").iterdir()) if (mnt / "run").exists() else []
            return r
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)

    def crafted(*command: str, init: bool = False) -> dict[str, Any]:
        """A run directory (or an --init file) whose checkpoint carries a payload: refused, never run."""
        d = Path(fresh("crafted"))
        shutil.copytree(run, d)
        marker = work / "PAYLOAD_RAN"
        marker.unlink(missing_ok=True)
        ckpt = _crafted_file(d / io.CHECKPOINT, marker)
        args = [*base, "--epochs", "1", "--init", str(ckpt), "--out", fresh("o")] if init else [*command, str(d)]
        return {**_cli(args), "payload_ran": marker.exists()}

    est = (
        "import numpy as np, sys\nfrom deepclust import DeepClusterer\nfrom deepclust.errors import DeepClustError\n"
        "x = np.random.default_rng(0).normal(size=(90, 8)).astype('float32')\n"
        "try:\n    DeepClusterer('idfd', n_clusters=3, epochs=2, batch_size=16, device='cpu', lr=1e6).fit(x)\n"
        "except DeepClustError as e:\n    print('deepclust: error:', e, file=sys.stderr); sys.exit(2)\n"
    )
    rows += [
        ("--out on a full disk (64 KiB tmpfs)", full_disk),
        ("random bytes in checkpoint.pt, then resume", damaged),
        ("logs but no checkpoint, then train into the same --out", killed_before_checkpoint),
        (
            "Ctrl-C during epoch 1",
            lambda: _cli(
                [*base[:4], "digits", *base[5:], "--epochs", "50", "--out", fresh("int")],
                sigint_when=work / "int" / io.CONFIG,
            ),
        ),
        ("resume train.epochs=1 after 2 epochs", lambda: _cli(["resume", run, "train.epochs=1"])),
        (
            "resume --device cpu (documented: exit 0)",
            lambda: _cli(["resume", run, "train.epochs=3", "--device", "cpu"]),
        ),
        ("estimator with lr=1e6", lambda: _cli([], python=est)),
        ("crafted checkpoint.pt (pickle payload), then resume", lambda: crafted("resume")),
        ("crafted checkpoint.pt (pickle payload), then eval", lambda: crafted("eval")),
        ("crafted checkpoint.pt (pickle payload), then predict", lambda: crafted("predict")),
        ("crafted checkpoint (pickle payload) as --init", lambda: crafted(init=True)),
    ]
    table = []
    for name, make in rows:
        r = make()
        log.info("%-55s exit %s  %s", name, r["exit"], r["line"])
        table.append({"input": name, **r})
    return table


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "child":
        return child(Path(args[1]), args[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--no-table", action="store_true", help="skip the bad-input table")
    p.add_argument("--out", default=str(RESULTS / "faults_idfd_digits_cpu.json"))
    a = p.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from deepclust.bench import machine_info, stamp_record, write_record

    start, date = machine_info(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="deepclust-faults-") as tmp:
        record: dict[str, Any] = {
            "benchmark": "fault injection (issue #17)",
            "run": {"args": RUN_ARGS, "epochs": a.epochs},
            "seed": a.seed,
        }
        record["faults"] = fault_injection(Path(tmp), a.kills, a.seed, a.epochs)
        f = record["faults"]
        log.info(
            "kills %d, survived %d, checkpoints lost %d, runs %d with different weights %d, metrics inconsistencies %d",
            f["kills"],
            f["kills_survived"],
            f["checkpoints_lost"],
            f["runs"],
            f["runs_with_different_weights"],
            f["metrics_inconsistencies"],
        )
        if not a.no_table:
            record["bad_inputs"] = bad_input_table(Path(tmp))
    record["wall_time_s"] = round(time.time() - t0, 1)
    stamp_record(record, start, "benchmarks/faults.py", args, date)
    path = write_record(record, a.out)
    log.info("written: %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
