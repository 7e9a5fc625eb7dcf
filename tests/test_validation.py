"""Bad input through the real console script: exit 2, stderr names the flag/file/value, no traceback."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rynn_edge.runtime.argtypes import NumberList, _joins_negative_values
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import save_calibration
from rynn_edge.runtime.tokens.images import to_model_input

CLI = [sys.executable, "-m", "rynn_edge.runtime.cli"]
RUN = ["run", "model", "--port", "/nonexistent", "--calibration", "c.json", "--instruction", "x"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ([*RUN, "--loop-rate", "0"], ["--loop-rate", "[1, 1000]"]),
        ([*RUN, "--loop-rate", "100000"], ["--loop-rate", "[1, 1000]"]),
        ([*RUN, "--rate", "-30"], ["--rate", "(0, 1000]"]),
        ([*RUN, "--rate", "nan"], ["--rate", "finite"]),
        ([*RUN, "--duration", "-5"], ["--duration", "> 0"]),
        ([*RUN, "--async-remaining", "0"], ["--async-remaining", ">= 1"]),
        ([*RUN, "--bus-retries", "-1"], ["--bus-retries"]),
        ([*RUN, "--max-speed", "0"], ["--max-speed"]),
        ([*RUN, "--inference-deadline", "abc"], ["--inference-deadline", "'abc'"]),
        ([*RUN, "--rest-pose", "-1,2,3"], ["--rest-pose", "6 numbers"]),
        (["demo", "--duration", "0"], ["--duration"]),
        (["make-tiny-checkpoint", "out", "--hidden-size", "0"], ["--hidden-size", "multiple of 128"]),
        (["make-tiny-checkpoint", "out", "--hidden-size", "200"], ["--hidden-size", "got 200"]),
        (["make-tiny-checkpoint", "out", "--layers", "0"], ["--layers"]),
        (["bench", "m", "--runs", "0"], ["--runs", ">= 1"]),
        (["bench", "m", "--warmup", "-1"], ["--warmup", ">= 0"]),
        (["bench", "m", "--chunk-lengths", "5,0"], ["--chunk-lengths"]),
        (
            ["predict", "m", "--state", "1", "--instruction", "x", "--max-new-tokens", "0"],
            ["--max-new-tokens"],
        ),
        (["predict", "m", "--state", "1,x", "--instruction", "x"], ["--state", "'x'"]),
        (["predict", "m", "--state", "1", "--instruction", "x", "--image-size", "300"], ["--image-size"]),
        (["sim", "--ids", "1,300"], ["--ids"]),
    ],
)
def test_numeric_flags_are_refused_at_parse_time(args, needles):
    refused(cli(*args), *needles)


def test_help_shows_the_ranges():
    out = " ".join(cli("run", "--help").stdout.split())
    assert "servo loop rate, Hz (default 100); valid: [1, 1000]" in out
    assert "stop after SECONDS (default: until Ctrl-C); valid: > 0" in out


def test_negative_number_lists_are_values():
    joined = _joins_negative_values(
        ["--state", "-40,60.5,150", "--rest-pose", "-1e-3", "-o", "x"], {"--state"}
    )
    assert joined == ["--state=-40,60.5,150", "--rest-pose", "-1e-3", "-o", "x"]
    # Through the parser: --rest-pose with a negative first value parses; the run then fails on the
    # missing camera (a later check), not on argparse.
    proc = cli(*RUN, "--rest-pose", "-10,-20,15,0,30,40")
    refused(proc, "--camera")
    assert NumberList(float)("-40, 60.5,-1e2") == [-40.0, 60.5, -100.0]


def test_predict_accepts_a_negative_state(so100_bundle, frames):
    b = so100_bundle
    proc = cli(
        "predict", str(b["model"]), "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"]),
        "--image", str(frames[0]), "--image", str(frames[1]),
        "--state", "-40,60.5,150,-10,5,30", "--instruction", "pick", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["actions"]) > 0


def _calibration(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "calibration.json"
    save_calibration(path, so100.simulator_calibration())
    data = json.loads(path.read_text())
    for motor, fields in changes.items():
        data[motor].update(fields)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"gripper": {"id": 1}}, ["'shoulder_pan'", "'gripper'", "both have id 1"]),
        ({"elbow_flex": {"range_max": 5000}}, ["'elbow_flex'", "range_max 5000", "0..4095"]),
        ({"wrist_roll": {"range_min": -3}}, ["'wrist_roll'", "range_min -3"]),
        ({"shoulder_lift": {"drive_mode": 2}}, ["'shoulder_lift'", "drive_mode 2"]),
    ],
)
def test_bad_calibration_is_refused_before_the_bus(tmp_path, changes, needles):
    path = _calibration(tmp_path, **changes)
    refused(cli(*RUN[:-4], "--calibration", str(path), "--instruction", "x", "--camera", "f=synthetic"),
            str(path), *needles)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "needles"),
    [("front=synthetic:soon", ["front=synthetic:soon", "SECONDS > 0"]), ("front=synthetic:-1", ["'-1'"])],
)
def test_bad_camera_source(spec, needles):
    refused(cli(*RUN, "--camera", spec), *needles)


def test_camera_without_opencv_names_the_extra(tmp_path):
    (tmp_path / "cv2.py").write_text("raise ImportError('No module named cv2')\n")
    proc = subprocess.run(
        [*CLI, *RUN, "--camera", "front=0"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"},
    )  # fmt: skip
    refused(proc, "--camera front", "pip install 'rynn-edge[camera]'")


def test_output_paths_of_the_wrong_kind(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(cli("make-tiny-checkpoint", str(a_file)), str(a_file), "expected a folder")
    refused(cli("export", "m", "--tokenizer", "t", "--vq", "v", "-o", str(a_file)), "-o/--out", str(a_file))
    refused(cli("imagine", "m", "--action", "1", "--out", str(tmp_path)), "--out", "is a folder")
    refused(cli(*RUN, "--episode-log", str(a_file / "log.jsonl")), "--episode-log", "is a file, not a folder")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None], ids=["empty", "garbage", "truncated"])
def test_bad_safetensors_names_the_file(so100_bundle, frames, tmp_path, content):
    model = tmp_path / "model"
    shutil.copytree(so100_bundle["model"], model)
    weights = sorted(model.glob("*.safetensors"))[0]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if content is None else content)
    b = so100_bundle
    proc = cli(
        "predict", str(model), "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"]),
        "--image", str(frames[0]), "--image", str(frames[1]), "--state", "0,0,0,0,0,0", "--instruction", "x",
    )  # fmt: skip
    refused(proc, str(weights), "safetensors")


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_bad_images_name_the_file(so100_bundle, tmp_path):
    bomb, junk = tmp_path / "bomb.png", tmp_path / "junk.png"
    _png_header_only(bomb, 30000, 30000)
    junk.write_bytes(b"not a picture")
    b = so100_bundle
    for image, needle in ((bomb, "too many pixels"), (junk, "cannot read")):
        proc = cli(
            "predict", str(b["model"]), "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"]),
            "--image", str(image), "--image", str(image), "--state", "0,0,0,0,0,0", "--instruction", "x",
        )  # fmt: skip
        refused(proc, str(image), needle)


def _reloaded(img: Image.Image, fmt: str = "PNG") -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def test_every_pillow_mode_matches_the_8bit_picture():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    rgb = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    lum, color = Image.fromarray(gray, "L"), Image.fromarray(rgb, "RGB")
    for img in (
        _reloaded(Image.fromarray(gray.astype(np.uint16) * 257)),  # a 16-bit PNG (I;16)
        Image.fromarray(gray.astype(np.int32) * 257),  # I, 16-bit values
        lum.convert("I"),  # I, 8-bit values
        lum.convert("F"),
        Image.fromarray(gray.astype(np.float32) / 255),  # F in 0..1
        lum.convert("LA"),
    ):
        assert np.array_equal(to_model_input([img], 32), to_model_input([lum], 32)), img.mode
    assert np.array_equal(to_model_input([color.convert("CMYK")], 32), to_model_input([color], 32))
    # A palette picture with a transparent index: the same as its RGBA form (alpha onto white); at the
    # model size, since palettes resize with nearest (as upstream) and RGBA with bicubic.
    pal = color.resize((32, 32)).quantize(16)
    pal.info["transparency"] = 3
    assert np.array_equal(to_model_input([pal], 32), to_model_input([pal.convert("RGBA")], 32))
    assert to_model_input([pal], 32).max() == 1.0  # the transparent pixels are white


def test_tiny_head_dim_is_spelled_alike():
    from rynn_edge.runtime.commands import make_tiny
    from rynn_edge.runtime.tiny import model

    assert make_tiny.HEAD_DIM == model.HEAD_DIM
    assert make_tiny.OUTLIER_KINDS == model.OUTLIER_KINDS


def _predict_args(bundle: dict[str, Path], frames: list[Path], instruction: str) -> list[str]:
    return [
        "predict", str(bundle["model"]), "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"]),
        "--image", str(frames[0]), "--image", str(frames[1]), "--state", "-40,60.5,150,-10,5,30",
        "--instruction", instruction, "--json",
    ]  # fmt: skip


def test_a_prompt_longer_than_the_model_is_refused_or_cut_on_request(so100_bundle, frames) -> None:
    long = " ".join(["place the red block inside the circle"] * 1200)  # ~8000 tokens; the model has 4096
    refused(
        cli(*_predict_args(so100_bundle, frames, long)), "max_position_embeddings", "--truncate-instruction"
    )
    proc = cli(*_predict_args(so100_bundle, frames, long), "--truncate-instruction")
    assert proc.returncode == 0, proc.stderr
    assert "warning: instruction cut" in proc.stderr
    assert 4000 < len(json.loads(proc.stdout)["prompt_ids"]) <= 4096


def test_a_folder_without_manifest_names_the_manifest(tmp_path) -> None:
    proc = cli("predict", str(tmp_path), "--backend", "onnxruntime", "--state", "1", "--instruction", "x")
    refused(proc, str(tmp_path / "manifest.json"), "rynn-edge export")


def test_stats_of_the_wrong_robot_name_the_file(so100_bundle, frames, tmp_path) -> None:
    stats = tmp_path / "stats.json"
    ranges = {"min": [-1.0] * 5, "max": [1.0] * 5}
    stats.write_text(json.dumps({"state": ranges, "action": {"min": [-1.0] * 6, "max": [1.0] * 6}}))
    proc = cli(*_predict_args(so100_bundle, frames, "x"), "--stats", str(stats))
    refused(proc, str(stats), "5 state dims", "so100 state has 6")
