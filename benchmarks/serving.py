"""One control step through Triton and through the LeRobot endpoint vs in-process, on the same artifact.

Per path: latency of one whole step (p50/p99 over --runs after --warmup), its ratio to the in-process
p50 of the same run, and the bytes one request and its response carry. In-process =
`Predictor.predict` on onnxruntime; triton = `--backend triton` against `rynn-edge serve` (real
tritonserver, gRPC, 127.0.0.1); lerobot = LeRobot's SendObservations + GetActions against
`serve --lerobot` (in-process onnxruntime behind it). Writes
benchmarks/results/serving_<name>.{json,csv}.

    python benchmarks/serving.py cpu_tiny [--artifact DIR] [--runs 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.predictor import open_predictor
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.serving import server_env
from rynn_edge.runtime.serving.lerobot import messages, pickles
from rynn_edge.runtime.serving.triton_server import TritonServer, free_port

RESULTS = Path(__file__).resolve().parent / "results"
STATE = np.array([3.5, 120.0, 80.0, -10.0, 5.0, 30.0])
TASK = "pick up the cube"


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]  # two VGA cameras


def timed(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "runs": runs}


def tiny_artifact(scratch: Path) -> Path:
    bundle = scratch / "tiny"
    assert main(["make-tiny-checkpoint", str(bundle), "--preset", "so100"]) == 0
    out = scratch / "art"
    sources = ["--tokenizer", str(bundle / "tokenizer"), "--vq", str(bundle / "vq")]
    flags = ["-o", str(out), "--precision", "fp32", "--format", "triton"]
    assert main(["export", str(bundle / "model"), *sources, *flags]) == 0
    return out


def lerobot_path(art: Path, views, horizon: int, runs: int, warmup: int) -> dict:
    import grpc

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(art), "--lerobot",
                             "--port", str(port)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "ready:" in proc.stdout.readline()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        send = channel.stream_unary(messages.method("SendObservations"), lambda m: m.SerializeToString(),
                                    messages.Empty.FromString)  # fmt: skip
        get = channel.unary_unary(messages.method("GetActions"), lambda m: m.SerializeToString(),
                                  messages.Actions.FromString)  # fmt: skip
        start = {name: channel.unary_unary(messages.method(name), lambda m: m.SerializeToString(),
                                           messages.Empty.FromString)
                 for name in ("Ready", "SendPolicyInstructions")}  # fmt: skip
        features = {f"observation.images.{view}": {"dtype": "image"} for view in ("front", "wrist")}
        instructions = pickles.RemotePolicyConfig("rynnvla002", art.name, features, actions_per_chunk=horizon)
        start["Ready"](messages.Empty(), timeout=60)
        start["SendPolicyInstructions"](messages.PolicySetup(data=pickles.dumps(instructions)), timeout=60)
        raw = {f"{m}.pos": float(v) for m, v in zip(so100.MOTORS, STATE, strict=True)}
        raw |= {"front": views[0], "wrist": views[1], "task": TASK}
        payload = pickles.dumps(pickles.TimedObservation(time.time(), 0, raw, must_go=True))
        sizes = {}

        def step():
            send(messages.chunked(payload), timeout=60)
            sizes["response"] = len(get(messages.Empty(), timeout=60).data)

        result = timed(step, runs, warmup)
        return {**result, "request_bytes": len(payload), "response_bytes": sizes["response"]}
    finally:
        proc.terminate()
        proc.wait(30)


def run(args: argparse.Namespace) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="rynn-edge-bench-serving-"))
    art = args.artifact or tiny_artifact(scratch)
    views = frames()
    local = open_predictor(art, backend="onnxruntime")
    result = timed(lambda: local.predict(views, STATE, TASK), args.runs, args.warmup)
    rows = [
        {"path": "in-process", "backend": "onnxruntime", **result, "request_bytes": 0, "response_bytes": 0}
    ]
    server = TritonServer(server_env.prepare(), art / "triton", http_port=free_port(), grpc_port=free_port())
    server.start()
    try:
        remote = open_predictor(art, backend="triton", server=server.grpc_url)
        result = timed(lambda: remote.predict(views, STATE, TASK), args.runs, args.warmup)
        rows.append({"path": "triton (gRPC, rynn_step)", "backend": "onnxruntime in tritonserver", **result,
                     "request_bytes": remote.backend.last_request_bytes,
                     "response_bytes": remote.backend.last_response_bytes})  # fmt: skip
    finally:
        server.stop()
    rows.append({"path": "lerobot (gRPC, AsyncInference)", "backend": "onnxruntime",
                 **lerobot_path(art, views, local.backend.time_horizon, args.runs, args.warmup)})  # fmt: skip
    for row in rows:  # the baseline is the in-process row of this same run
        row["p50_vs_in_process"] = row["p50_ms"] / rows[0]["p50_ms"]
    manifest = json.loads((art / "manifest.json").read_text())
    return {
        "benchmark": "one control step (2 cameras 640x480, SO100 state, instruction) -> a chunk of goals",
        "measured": "client wall time per step; server on the same machine, 127.0.0.1",
        "artifact": {
            "precision": manifest["precision"],
            "weights": "random (tiny checkpoint)" if not args.artifact else str(args.artifact),
            "model": {
                k: manifest["model"][k]
                for k in ("hidden_size", "num_hidden_layers", "time_horizon", "action_dim")
            },
        },  # fmt: skip
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },  # fmt: skip
        "rynn_edge_version": version("rynn-edge"),
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "rows": rows,
    }


def main_() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name")
    parser.add_argument("--artifact", type=Path, help="an artifact exported with --format triton")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    record = run(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serving_{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    with open(RESULTS / f"serving_{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(record["rows"][0]))
        writer.writeheader()
        writer.writerows(record["rows"])
    for row in record["rows"]:
        print(f"{row['path']:32s} p50 {row['p50_ms']:8.1f} ms (x{row['p50_vs_in_process']:.3f})  "
              f"p99 {row['p99_ms']:8.1f} ms  "
              f"request {row['request_bytes']:>9d} B  response {row['response_bytes']:>7d} B")  # fmt: skip


if __name__ == "__main__":
    main_()
