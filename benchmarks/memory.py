"""Peak memory of load, export (workstation), build (device) and a run, measured on random checkpoints at
the real widths (hidden 4096, intermediate 11008, vocab 65536) with 1-3 decoder layers, fitted per layer
(peak = a + b x layers) and extrapolated to the 7B's 32; plus the 7B's runtime memory per precision at the
SO100 and LIBERO prompt lengths (formulas: rynn_edge.runtime.bench.memory) and what fits which Jetson.

Every measurement is a fresh process (a forked child inherits its parent's RSS high-water mark); its
peak is that child's ru_maxrss from wait4:
  load    load_model of the checkpoint (torch, bf16 and fp32), with the bytes of the loaded weights
  export  rynn-edge export CKPT -o ART --target onnxruntime --precision P --max-fallback 0
  run     rynn-edge predict ART --backend onnxruntime (one continuous chunk)
  build   rynn-edge build ART --builder tensorrt-rtx --compute-capability SM86 (ahead of time, on the CPU)

    python benchmarks/memory.py --layers 1 2 3 --precisions bf16 int8   # measure, merged into the record
    python benchmarks/memory.py --refit                                  # fits + tables from the record
Writes benchmarks/results/memory/memory.{json,csv}; make_readme_table.py renders them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from precision_gates import calibration
from runs import RESULTS

from rynn_edge.runtime.bench.timing import environment, write_csv, write_json

GIB = 2**30
OUT = RESULTS / "memory"
MEASURED = "python benchmarks/memory.py --layers 1 2 3 --precisions bf16 int8"  # the recorded run (--refit)
CLI = [sys.executable, "-m", "rynn_edge.runtime.cli"]
WIDTHS = ["--hidden-size", "4096", "--intermediate-size", "11008"]
COMMANDS = ("load", "export", "run", "build")
PREDICT = ["--backend", "onnxruntime", "--state", "10,80,90,20,5,30", "--instruction", "pick up the cube"]
REPRODUCE = {
    "checkpoint": "rynn-edge make-tiny-checkpoint CKPT " + " ".join(WIDTHS) + " --layers N",
    "load": "python benchmarks/memory.py --load CKPT/model DTYPE",
    "export": "rynn-edge export CKPT/model --tokenizer CKPT/tokenizer --vq CKPT/vq -o ART "
    "--target onnxruntime --precision P --calibration-data CALIB --max-fallback 0 --allow-accuracy-loss",
    "run": "rynn-edge predict ART --image F0 --image F1 " + shlex.join(PREDICT),
    "build": "rynn-edge build ART --builder tensorrt-rtx --compute-capability SM86",
}
BACKENDS = {
    "load": "torch CPU (rynn_edge load_model)",
    "export": "torch fp32 reference + onnxruntime CPU accuracy (target onnxruntime)",
    "run": "onnxruntime CPU",
    "build": "TensorRT-RTX, ahead of time for SM86, no GPU (host memory only)",
}


def load_child(model_dir: str, dtype_name: str) -> None:
    """`--load`: load_model in this fresh process; prints the loaded weights' bytes as JSON."""
    import torch

    from rynn_edge.runtime.model.checkpoint import load_model

    _, backbone, head = load_model(model_dir, dtype=getattr(torch, dtype_name))
    weights = sum(p.numel() * p.element_size() for m in (backbone, head) for p in m.parameters())
    print(json.dumps({"weights_gib": round(weights / GIB, 4)}))


def measure(argv: list[str], log: Path) -> dict:
    """Run `argv` as a child; its peak RSS (wait4 ru_maxrss, KiB on Linux), seconds and exit code."""
    started = time.monotonic()
    with log.open("w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),
        "seconds": round(time.monotonic() - started, 1),
        "exit": child.returncode,
    }


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def predicted_gib(points: list[dict], command: str, precision: str, layers: int) -> float | None:
    """The peak a fit of the smaller measured layer counts predicts (None below two of them)."""
    from rynn_edge.runtime.bench.memory import fit_line

    known = [
        (p["layers"], p["peak_rss_gib"])
        for p in points
        if (p["command"], p["precision"]) == (command, precision) and "peak_rss_gib" in p
    ]
    known = [(n, v) for n, v in known if n < layers]
    return fit_line(known).at(layers) if len({n for n, _ in known}) > 1 else None


class Recorder:
    """The record's points, merged by (command, precision, layers) and saved after every measurement."""

    def __init__(self, args: argparse.Namespace, logs: Path):
        path = OUT / "memory.json"
        self.points: list[dict] = json.loads(path.read_text())["points"] if path.is_file() else []
        self.args, self.logs = args, logs

    def run(self, command: str, precision: str, layers: int, argv: list[str], skip: str = "") -> dict | None:
        """Measure unless `skip` says why not, or the fit of smaller layer counts or the free memory says
        it would not fit."""
        point = {"command": command, "precision": precision, "layers": layers, "backend": BACKENDS[command]}
        guess = predicted_gib(self.points, command, precision, layers)
        limit = self.args.max_peak_gib
        for _ in range(20):  # other users' jobs end: wait up to 10 min for the memory to come back
            if skip or available_gib() >= (guess or limit) + 1:
                break
            time.sleep(30)
        if skip:
            point["skipped"] = skip
        elif guess is not None and guess > limit:
            point["skipped"] = f"predicted {guess:.1f} GiB from fewer layers > the {limit} GiB limit"
        elif available_gib() < (guess or limit) + 1:
            point["skipped"] = f"only {available_gib():.1f} GiB available"
        else:
            log = self.logs / f"{command}_{precision}_{layers}.log"
            point |= measure(argv, log)
            if point["exit"] != 0:
                print(log.read_text()[-3000:], file=sys.stderr)
        point["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        print(json.dumps(point), flush=True)
        key = (command, precision, layers)
        self.points = [p for p in self.points if (p["command"], p["precision"], p["layers"]) != key]
        self.points.append(point)
        save(self.points, self.args)
        return point if point.get("exit") == 0 else None


def measure_layers(rec: Recorder, layers: int, scratch: Path, calib: Path, frames: list[str]) -> None:
    ckpt, commands = scratch / f"ckpt{layers}", rec.args.commands
    subprocess.run(
        [*CLI, "make-tiny-checkpoint", str(ckpt), *WIDTHS, "--layers", str(layers)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if "load" in commands:
        for dtype, name in (("bfloat16", "bf16"), ("float32", "fp32")):
            argv = [sys.executable, __file__, "--load", str(ckpt / "model"), dtype]
            if (point := rec.run("load", name, layers, argv)) is not None:
                log = rec.logs / f"load_{name}_{layers}.log"
                point |= json.loads(log.read_text().strip().splitlines()[-1])
    for precision in rec.args.precisions:
        art = scratch / f"art{layers}_{precision}"
        export = [*CLI, "export", str(ckpt / "model"), "--tokenizer", str(ckpt / "tokenizer")]
        export += ["--vq", str(ckpt / "vq"), "-o", str(art), "--target", "onnxruntime"]
        export += ["--precision", precision, "--calibration-data", str(calib)]
        export += ["--max-fallback", "0", "--allow-accuracy-loss"]
        if "export" in commands and (point := rec.run("export", precision, layers, export)) is not None:
            point["weights_file_gib"] = round((art / "backbone.data").stat().st_size / GIB, 4)
        if "run" in commands and precision == "bf16":
            rec.run("run", precision, layers, [], skip="onnxruntime CPU has no bf16 kernels")
        if not (art / "manifest.json").is_file():
            continue
        if "run" in commands and precision != "bf16":
            images = [arg for f in frames[:2] for arg in ("--image", f)]
            rec.run("run", precision, layers, [*CLI, "predict", str(art), *images, *PREDICT])
        if "build" in commands:
            build = [*CLI, "build", str(art), "--builder", "tensorrt-rtx", "--compute-capability", "SM86"]
            if (point := rec.run("build", precision, layers, build)) is not None:
                target = json.loads((art / "manifest.json").read_text())["target"]
                point["builder"] = f"{target['builder']} {target['tensorrt_version']}"
        shutil.rmtree(art)
    save(rec.points, rec.args)
    shutil.rmtree(ckpt)


def save(points: list[dict], args: argparse.Namespace) -> None:
    from memory_tables import tables  # the formulas import torch: not needed by the --load child

    env = environment()
    env["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    record = {
        "benchmark": "peak RSS per command, fresh process each, wait4 ru_maxrss",
        "environment": env,
        "weights": "random",
        "checkpoint": "full-width random weights (hidden 4096, intermediate 11008, vocab 65536), "
        "N decoder layers, the tiny random VQGAN: " + REPRODUCE["checkpoint"],
        "script": MEASURED if args.refit else "python " + shlex.join(["benchmarks/memory.py", *sys.argv[1:]]),
        "reproduce": REPRODUCE,
        "max_peak_gib": args.max_peak_gib,
        "points": sorted(points, key=lambda p: (p["command"], p["precision"], p["layers"])),
        **tables(points),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(record, OUT / "memory.json")
    write_csv(record["points"], OUT / "memory.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    ap.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    ap.add_argument("--max-peak-gib", type=float, default=11.0, help="skip what a fit predicts above this")
    ap.add_argument("--refit", action="store_true", help="no measuring: redo fits and tables from the record")
    ap.add_argument("--load", nargs=2, metavar=("MODEL_DIR", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        load_child(*args.load)
        return
    with tempfile.TemporaryDirectory(prefix="rynn-memory-") as tmp:
        scratch = Path(tmp)
        rec = Recorder(args, scratch)
        if not args.refit:
            calib = calibration(scratch / "calib")
            frames = sorted(str(p) for p in calib.glob("frame*.png"))
            for layers in args.layers:
                measure_layers(rec, layers, scratch, calib, frames)
        save(rec.points, args)
    print(OUT / "memory.json")


if __name__ == "__main__":
    main()
