"""`rynn-edge serve` on the real Triton Inference Server, and `--backend triton` against it: the same
prompt ids, VQ codes, actions and tokens as the in-process onnxruntime backend on the same artifact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from serving import start_serve, stop_serve

from rynn_edge.runtime.backends.artifact import Artifact
from rynn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from rynn_edge.runtime.cli import main

STATE = "3.5,120,80,-10,5,30"


@pytest.fixture(scope="module")
def served(so100_fp32):
    art, _ = so100_fp32
    server = start_serve(art)
    yield server
    stop_serve(server)


def predict_json(capsys, art, frames, backend, *extra):
    capsys.readouterr()
    images = ["--image", str(frames[0]), "--image", str(frames[3])]
    query = ["--state", STATE, "--instruction", "pick up the cube", "--json"]
    code = main(["predict", str(art), "--backend", backend, *images, *query, *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_every_model_is_ready(served, so100_fp32):
    _, manifest = so100_fp32
    for name in ["rynn_step", *manifest["stages"]]:
        assert f"{name} (READY)" in served.ready_line
    index = grpcclient.InferenceServerClient(served.grpc).get_model_repository_index(as_json=True)
    assert {m["name"]: m["state"] for m in index["models"]} == dict.fromkeys(
        ["rynn_step", *manifest["stages"]], "READY"
    )


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_predict_through_triton_equals_onnxruntime(capsys, served, so100_fp32, frames, mode):
    art, _ = so100_fp32
    extra = ("--mode", mode, "--max-new-tokens", "40") if mode == "discrete" else ()
    local = predict_json(capsys, art, frames, "onnxruntime", *extra)
    remote = predict_json(capsys, art, frames, "triton", "--server", served.grpc, *extra)
    assert remote["prompt_ids"] == local["prompt_ids"] and remote["vq_codes"] == local["vq_codes"]
    assert remote.get("generated_tokens") == local.get("generated_tokens")
    for key in ("actions_normalized", "actions", "goals"):
        assert np.asarray(remote[key]).shape == np.asarray(local[key]).shape
        assert np.allclose(remote[key], local[key], rtol=0, atol=1e-6), key


def test_a_stage_model_runs_its_graph(served, so100_fp32):
    art, _ = so100_fp32
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32)
    tensor = grpcclient.InferInput("images", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    codes = grpcclient.InferenceServerClient(served.grpc).infer("vq_encoder_256", [tensor]).as_numpy("codes")
    expected = OnnxRuntimeBackend(Artifact.open(art, check_device=False)).vq_encode(pixels)
    assert np.array_equal(codes.astype(np.int64), expected)


def test_a_bad_request_comes_back_as_a_clear_error(capsys, served, so100_fp32, frames):
    art, _ = so100_fp32
    capsys.readouterr()
    code = main(["predict", str(art), "--backend", "triton", "--server", served.grpc, "--image",
                 str(frames[0]), "--state", STATE, "--instruction", "pick up the cube"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"triton server {served.grpc}: so100 queries take 2 images in prompt order, got 1" in err


def test_a_busy_port_is_refused_clearly(served, so100_fp32):
    art, _ = so100_fp32
    proc = subprocess.run(
        [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(art), "--http-port",
         str(served.http_port), "--grpc-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        proc.returncode == 2 and f"--http-port {served.http_port}" in proc.stderr and "in use" in proc.stderr
    )


def test_no_repository_and_no_server_are_clear_errors(capsys, so100_bundle, tmp_path):
    assert main(["serve", str(tmp_path)]) == 2
    assert "no triton/ repository" in capsys.readouterr().err
    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # bound, never listening: nothing answers there
    code = main(["predict", "rynn_step", "--backend", "triton", "--server",
                 f"127.0.0.1:{port.getsockname()[1]}", "--image", "x.png", "--state", STATE,
                 "--instruction", "x", "--server-timeout", "2"])  # fmt: skip
    port.close()
    assert code == 2 and "triton server 127.0.0.1:" in capsys.readouterr().err


def test_sigterm_stops_the_server(so100_fp32):
    art, _ = so100_fp32
    server = start_serve(art, "--instances", "2")
    assert "rynn_step (READY)" in server.ready_line
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0
    with pytest.raises(OSError):  # gone: the process, and the port it listened on
        socket.create_connection(("127.0.0.1", server.grpc_port), timeout=2)
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(server.tritonserver_pid, 0)


def imagine_json(capsys, art, frames, out, backend, *extra):
    capsys.readouterr()
    args = ["imagine", str(art), "--backend", backend, "--image", str(frames[0]), "--action", "1,2,3,4,5,20",
            "--prompt", "lerobot", "--out", str(out), "--json", *extra]  # fmt: skip
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_imagine_through_triton_equals_onnxruntime(capsys, served, so100_fp32, frames, tmp_path):
    art, _ = so100_fp32
    local = imagine_json(capsys, art, frames, tmp_path / "local.png", "onnxruntime")
    remote = imagine_json(capsys, art, frames, tmp_path / "remote.png", "triton", "--server", served.grpc)
    for key in ("prompt_ids", "vq_codes", "generated_tokens", "problems"):
        assert remote[key] == local[key], key
    assert len(remote["generated_tokens"]) == 277 and remote["images"] == [str(tmp_path / "remote.png")]
    pixels = [np.asarray(Image.open(tmp_path / name)) for name in ("local.png", "remote.png")]
    assert pixels[0].shape == (256, 256, 3) and np.array_equal(pixels[0], pixels[1])
    code = main(["imagine", str(art), "--backend", "triton", "--server", served.grpc, "--image",
                 str(frames[0]), "--action", "1,2", "--out", str(tmp_path / "x.png")])  # fmt: skip
    assert code == 2 and "--action has 2 values, the world-model stats expect 6" in capsys.readouterr().err


def test_bench_through_triton_against_in_process(capsys, served, so100_fp32, tmp_path):
    art, manifest = so100_fp32
    horizon = manifest["model"]["time_horizon"]
    capsys.readouterr()
    code = main(["bench", str(art), "--backend", "triton", "--server", served.grpc, "--chunk-lengths",
                 f"1,{horizon}", "--runs", "2", "--warmup", "1", "--no-plot", "--out", str(tmp_path),
                 "--compare", "onnxruntime", "--json"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = {(r["backend"], r["chunk_length"]): r for r in json.loads(out.out)["rows"]}
    remote, local = rows[("triton", horizon)], rows[("onnxruntime", horizon)]
    assert (remote["precision"], remote["weights"], remote["device"]) == ("fp32", "random", "server")
    assert remote["median_ms"] > 0 and remote["prompt_tokens"] == local["prompt_tokens"]
    assert local["speedup_vs_first"] > 0
    assert rows[("triton", 1)]["skipped"] == f"the served model's action head is built for T={horizon}"


def test_a_model_that_cannot_load_is_named_with_tritons_reason(so100_fp32, tmp_path):
    art, _ = so100_fp32
    broken = tmp_path / "broken"
    shutil.copytree(art, broken)
    (broken / "vq_decoder.onnx").write_bytes(b"not an onnx graph")
    proc = subprocess.run(
        [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(broken), "--ready-timeout", "300"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    head, reasons = proc.stderr.split("models not READY:", 1)
    # Both models that read the graph refuse it by its hash, before onnxruntime sees it; the reasons
    # are the messages alone (no Python-backend stack).
    for model in ("vq_decoder", "rynn_step"):
        assert f"  {model}: " in reasons
    assert reasons.count("vq_decoder.onnx: 17 bytes, manifest says") == 2
    assert "Traceback" not in head and "At:" not in reasons


def test_a_server_environment_that_cannot_be_made_is_a_clear_error(so100_fp32, tmp_path):
    art, _ = so100_fp32
    offline = {"RYNN_EDGE_TRITON_ENV": str(tmp_path / "env"), "PIP_CONFIG_FILE": os.devnull,
               "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0",
               "PIP_TIMEOUT": "2"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(art)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **offline},
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot prepare the Triton server environment: failed to install nvidia-pytriton" in proc.stderr
    assert not list((tmp_path / "env").glob("*/.rynn-edge-ready"))  # the next start tries again
