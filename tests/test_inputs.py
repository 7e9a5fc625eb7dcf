"""Damaged inputs per surface, generated from a seed, through the real CLI entry (`runtime.cli.main`): each
ends with exit 2 and a message naming the file, line, key, flag or value, never with an exception, and
leaves nothing half-written. Surfaces: export --calibration-data, run --calibration, bench/profile flags,
imagine / vq decode outputs and views, verify's golden files, run --camera sources without OpenCV."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rynn_edge.export import calibration
from rynn_edge.runtime.backends.artifact import MANIFEST, write_manifest
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import save_calibration
from rynn_edge.runtime.robot.embodiment import EMBODIMENTS

SEED = 25
STATE = [10.0, 80.0, 90.0, 20.0, 5.0, 30.0]
# Values of the wrong kind for some key: every JSON type, empty and nested ones, a non-finite number.
WRONG = ["text", "", 0, -1.5, None, True, {}, {"x": 1}, [], ["x"], [[1, 2]], [1, 2, 3], float("inf")]
RUN = ["run", "model", "--port", "/nonexistent", "--instruction", "x", "--camera", "f=synthetic"]


def refused(capsys, argv: list[str], *needles: str) -> str:
    """`main(argv)` returns 2 (an exception escaping it fails the test) and stderr names every needle."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --- export --calibration-data ---------------------------------------------------------------------------
def _export(bundle: dict[str, Path], calib: Path, out: Path) -> list[str]:
    b = bundle
    return ["export", str(b["model"]), "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"]),
            "-o", str(out), "--calibration-data", str(calib)]  # fmt: skip


def _valid_row(frames: list[Path]) -> dict[str, Any]:
    return {"images": [str(frames[0]), str(frames[1])], "state": STATE, "instruction": "pick up the cube"}


def _damaged_rows(frames: list[Path]) -> Iterator[tuple[str, dict[str, Any] | Any, str]]:
    """(case, damaged row, the key its message must name): every wrong kind for every key, a missing key,
    rows that are not objects, states that are LeRobot objects with the wrong joints."""
    for key in ("images", "state", "instruction"):
        for value in WRONG:
            if key == "instruction" and isinstance(value, str) and value.strip():
                continue  # any text is an instruction
            yield f"{key}={value!r}", {**_valid_row(frames), key: value}, f'"{key}"'
        row = _valid_row(frames)
        del row[key]
        yield f"no {key}", row, f'"{key}"'
    yield "three views", {**_valid_row(frames), "images": [str(frames[0])] * 3}, '"images" has 3'
    yield "missing image", {**_valid_row(frames), "images": ["nothere.png", str(frames[1])]}, "nothere.png"
    yield "state as text", {**_valid_row(frames), "state": "10,80,90,20,5,30"}, '"state"'
    joints = {f"{m}.pos": v for m, v in zip(so100.MOTORS, STATE, strict=True)}
    for case, state in (
        ("a joint missing", {k: v for k, v in joints.items() if k != "gripper.pos"}),
        ("an unknown joint", {**joints, "elbow.pos": 1.0}),
        ("a joint twice", {**joints, "gripper": 1.0}),
        ("a joint as text", {**joints, "gripper.pos": "open"}),
    ):
        yield case, {**_valid_row(frames), "state": state}, '"state"'
    for value in ([["a.png"], STATE, "x"], "row", 3, None):
        yield f"row {value!r}", value, "a JSON object"


def test_damaged_calibration_rows_name_file_line_and_key(capsys, so100_bundle, frames, tmp_path):
    rng = np.random.default_rng(SEED)
    for i, (case, damaged, key) in enumerate(_damaged_rows(frames)):
        folder = tmp_path / f"calib{i}"
        folder.mkdir()
        rows = [_valid_row(frames)] * int(rng.integers(0, 4))
        line = int(rng.integers(0, len(rows) + 1))
        rows.insert(line, damaged)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (folder / "samples.jsonl").write_text(text)
        out = tmp_path / f"exports{i}" / "art"
        err = refused(capsys, _export(so100_bundle, folder, out), f"samples.jsonl:{line + 1}:", key)
        assert not any(out.parent.iterdir()), (case, err)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (gzip.compress(b'{"images": []}\n'), "gzip-compressed"),
        (bytes(np.random.default_rng(SEED).integers(128, 256, 64, dtype=np.uint8)), "not UTF-8"),
        (b"", "no samples"),
        (b"\n  \n", "no samples"),
        (b'{"images": ["a.png"], "state": [1,\n', "samples.jsonl:1: not valid JSON"),
        (b"\n" + b"[" * 100_000 + b"\n", "samples.jsonl:2: not valid JSON"),
    ],
    ids=["gzip", "binary", "empty", "blank", "truncated", "deeply-nested"],
)
def test_damaged_calibration_files_are_named(capsys, so100_bundle, tmp_path, content, needle):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "samples.jsonl").write_bytes(content)
    refused(capsys, _export(so100_bundle, tmp_path / "calib", tmp_path / "art"), "samples.jsonl", needle)
    refused(
        capsys, _export(so100_bundle, tmp_path / "calib" / "samples.jsonl", tmp_path / "art"), "not a folder"
    )


def _episode(folder: Path, frames: list[Path], row: dict[str, Any]) -> Path:
    for camera, frame in (("0_front", frames[0]), ("1_wrist", frames[1])):
        (folder / "images" / camera).mkdir(parents=True)
        shutil.copy(frame, folder / "images" / camera / "frame_000003.png")
    (folder / "episode.jsonl").write_text(json.dumps(row) + "\n")
    return folder


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"frame_index": "one"}, '"frame_index"'),
        ({"frame_index": -1}, '"frame_index"'),
        ({"frame_index": 3.5}, '"frame_index"'),
        ({"frame_index": True}, '"frame_index"'),
        ({"frame_index": 4}, "frame_000004.png"),
        ({"task": 7}, '"instruction"'),
        ({"observation.state": "1,2"}, '"observation.state"'),
    ],
)
def test_damaged_episode_rows_name_file_line_and_key(capsys, so100_bundle, frames, tmp_path, change, key):
    row = {"frame_index": 3, "observation.state": STATE, "task": "pick up the cube", **change}
    folder = _episode(tmp_path / "episode", frames, row)
    refused(capsys, _export(so100_bundle, folder, tmp_path / "art"), "episode.jsonl:1:", key)


def test_a_lerobot_joint_object_is_the_state_in_joint_order(frames, tmp_path):
    joints = {f"{m}.pos": v for m, v in zip(so100.MOTORS, STATE, strict=True)}
    shuffled = dict(reversed(list(joints.items())))
    rows = [{**_valid_row(frames), "state": state} for state in (STATE, joints, shuffled)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples = calibration.load_folder(tmp_path, EMBODIMENTS["so100"])
    assert [s.state.tolist() for s in samples] == [STATE] * 3
    episode = _episode(
        tmp_path / "episode", frames, {"frame_index": 3, "observation.state": joints, "task": "x"}
    )
    assert calibration.load_folder(episode, EMBODIMENTS["so100"])[0].state.tolist() == STATE


# --- run --calibration -----------------------------------------------------------------------------------
def _damaged_calibrations(folder: Path) -> Iterator[tuple[Path, str]]:
    """(path, what the message says besides the path): a LeRobot calibration root, binary files, JSON of
    every wrong shape, and per motor every field with a wrong kind or missing."""
    rng = np.random.default_rng(SEED)
    root = folder / "calibration"
    (root / "robots" / "so100_follower").mkdir(parents=True)
    save_calibration(root / "robots" / "so100_follower" / "arm.json", so100.simulator_calibration())
    yield root, "robots/so100_follower/arm.json"
    good = json.loads((root / "robots" / "so100_follower" / "arm.json").read_text())
    damaged: list[tuple[bytes, str]] = [
        (bytes(rng.integers(128, 256, 200, dtype=np.uint8)), "not text"),
        (b"\x00" * 16, "not valid JSON"),
        (pickle.dumps(good), "not text"),
        (json.dumps({"homing_offset": [0] * 6, "motor_names": list(so100.MOTORS)}).encode(), "older LeRobot"),
    ]
    damaged += [(json.dumps(value).encode(), "") for value in WRONG]
    not_integers = [v for v in WRONG if not isinstance(v, int) or isinstance(v, bool)]
    for motor in rng.permutation(list(so100.MOTORS))[:3]:
        for field in ("id", "drive_mode", "homing_offset", "range_min", "range_max"):
            value = not_integers[int(rng.integers(len(not_integers)))]
            damaged.append((json.dumps({**good, motor: {**good[motor], field: value}}).encode(), motor))
        damaged.append((json.dumps({**good, motor: rng.choice(["x", "1"]).item()}).encode(), motor))
        damaged.append((json.dumps({k: v for k, v in good.items() if k != motor}).encode(), motor))
    for i, (content, needle) in enumerate(damaged):
        path = folder / f"calibration{i}.json"
        path.write_bytes(content)
        yield path, needle


def test_damaged_run_calibrations_name_the_file(capsys, tmp_path):
    for path, needle in _damaged_calibrations(tmp_path):
        refused(capsys, [*RUN, "--calibration", str(path)], str(path), needle)


# --- bench / profile flags -------------------------------------------------------------------------------
def _measured(command: str, bundle: dict[str, Path], tmp_path: Path, *flags: str) -> list[str]:
    return [command, str(bundle["model"]), "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"]),
            "--out", str(tmp_path / "results"), "--no-plot", *flags]  # fmt: skip


BAD_FLAGS = {
    "--loop-rate": ["0", "-100", "nan", "inf", "1e9", "fast"],
    "--device": ["tpu", "gpu", "CUDA", "cuda:x", "cuda:", "mps", ""],
    "--chunk-lengths": ["0", "-1", "5,x", ",", "1.5"],
}


@pytest.mark.parametrize("command", ["bench", "profile"])
def test_bad_measurement_flags_are_refused_before_loading(capsys, command, tmp_path):
    rng = np.random.default_rng(SEED)
    for flag, values in BAD_FLAGS.items():
        if command == "profile" and flag != "--device":
            continue
        for value in rng.permutation(values):
            # the model does not exist: the flag must be refused before anything is loaded
            refused(capsys, [command, str(tmp_path / "none"), f"{flag}={value}"], flag)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["bench", "profile"])
def test_a_cuda_device_that_is_not_here_is_named(capsys, so100_bundle, tmp_path, command):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"
    refused(capsys, _measured(command, so100_bundle, tmp_path, "--device", missing), f"--device {missing}")
    assert not (tmp_path / "results").exists()


def test_chunk_lengths_beyond_the_model_are_refused_naming_the_bound(capsys, so100_bundle, tmp_path):
    # tiny SO100: 4096 positions, a 594-token prompt, 8 tokens per action -> T <= 437
    flags = ["--chunk-lengths", "1,438", "--runs", "1", "--warmup", "0"]
    refused(capsys, _measured("bench", so100_bundle, tmp_path, *flags), "--chunk-lengths 438", "at most 437",
            "max_position_embeddings 4096")  # fmt: skip
    assert not (tmp_path / "results").exists()


# --- imagine / vq decode ---------------------------------------------------------------------------------
BAD_SUFFIXES = ["next", "next.plot", "next.txt", "next.json", "next.xbm", "next.png.part", "next."]


def test_image_outputs_without_an_image_suffix_are_refused_before_loading(capsys, frames, tmp_path):
    rng = np.random.default_rng(SEED)
    none = str(tmp_path / "none")  # no model, no VQGAN: the refusal must come first
    for name in rng.permutation(BAD_SUFFIXES):
        out = str(tmp_path / name)
        refused(
            capsys, ["imagine", none, "--image", str(frames[0]), "--action", "1", "--out", out], out, "Pillow"
        )
        refused(
            capsys, ["vq", "decode", str(tmp_path / "codes.json"), "--vq", none, "-o", out], out, "Pillow"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_world_model_query_takes_one_or_two_views(capsys, frames, tmp_path):
    for count in (3, 4):
        images = [arg for frame in frames[:count] for arg in ("--image", str(frame))]
        argv = [
            "imagine",
            str(tmp_path / "none"),
            *images,
            "--action",
            "1",
            "--out",
            str(tmp_path / "next.png"),
        ]
        refused(capsys, argv, "one or two views", f"got {count}")
    assert not (tmp_path / "next.png").exists()


# --- verify: golden files --------------------------------------------------------------------------------
def _artifact_copy(src: Path, dst: Path) -> Path:
    """A copy of the artifact (not hard links: onnx refuses external data with several links, which would
    break every later test that loads the shared artifact's graphs)."""
    shutil.copytree(src, dst)
    return dst


def _replace(path: Path, content: bytes) -> None:
    path.unlink()
    path.write_bytes(content)


def _rehash(art: Path, **changes: Any) -> None:
    """Recompute every hash (a careful attacker would), with the manifest's top-level keys changed."""
    manifest = json.loads((art / MANIFEST).read_text())
    (art / MANIFEST).unlink()
    kept = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")}
    write_manifest(art, {**kept, **changes})


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _damaged_goldens(art: Path) -> Iterator[tuple[str, Any, str]]:
    """(case, how to damage a copy, needle)."""
    manifest = json.loads((art / MANIFEST).read_text())
    first = manifest["golden"][0]
    with np.load(art / first) as z:
        good = dict(z)

    def edit_manifest(copy: Path, change) -> None:
        """The manifest edited by hand, its hash table left as it was."""
        manifest = json.loads((copy / MANIFEST).read_text())
        change(manifest)
        (copy / MANIFEST).unlink()
        (copy / MANIFEST).write_text(json.dumps(manifest))

    def unhashed(copy: Path) -> None:
        shutil.copy(copy / first, copy / "golden" / "extra.npz")
        edit_manifest(copy, lambda m: m["golden"].append("golden/extra.npz"))

    yield "not hashed", unhashed, "golden/extra.npz listed in the manifest but not among its hashed files"
    yield (
        "hash dropped",
        lambda c: edit_manifest(c, lambda m: m["files"].pop(first)),
        "not listed with a hash",
    )
    yield "outside golden/", lambda c: _rehash(c, golden=["config.json"]), "config.json listed"
    yield "a string", lambda c: _rehash(c, golden=first), "not a list of file names"
    replacements = {
        "a pickle": (pickle.dumps(good), "pickled"),
        "object arrays": (_npz(**{**good, "ids": np.array([1, "x"], dtype=object)}), "allow_pickle"),
        "one array": (_npz_single(good["ids"]), "a single array"),
        "garbage": (b"PK\x03\x04" + bytes(100), "not a golden .npz"),
        "no hidden": (_npz(**{k: v for k, v in good.items() if k != "hidden"}), "'hidden'"),
        "hidden shape": (_npz(**{**good, "hidden": good["hidden"][:, :3]}), "'hidden'"),
        "actions as ints": (_npz(**{**good, "actions": good["actions"].astype(np.int64)}), "'actions'"),
        "ids out of vocabulary": (_npz(**{**good, "ids": good["ids"] + 10**9}), "outside the vocabulary"),
        "pixels without codes": (
            _npz(**{k: v for k, v in good.items() if not k.endswith("_codes")}),
            "no matching",
        ),
    }
    for case, (content, needle) in replacements.items():

        def damage(copy: Path, content: bytes = content) -> None:
            _replace(copy / first, content)
            _rehash(copy)

        yield case, damage, needle


def _npz_single(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_damaged_golden_files_are_refused(capsys, so100_fp32, tmp_path):
    art = so100_fp32[0]
    for i, (case, damage, needle) in enumerate(_damaged_goldens(art)):
        copy = _artifact_copy(art, tmp_path / f"art{i}")
        damage(copy)
        err = refused(capsys, ["verify", str(copy)], needle)
        assert str(copy) in err, (case, err)
    assert main(["verify", str(art)]) == 0  # the original is untouched


# --- run --camera without OpenCV -------------------------------------------------------------------------
def test_a_missing_camera_source_is_named_before_opencv(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError: no OpenCV here
    calib = tmp_path / "calibration.json"
    save_calibration(calib, so100.simulator_calibration())
    run = [*RUN[:-2], "--calibration", str(calib)]
    rng = np.random.default_rng(SEED)
    sources = [
        str(tmp_path / f"clip{i}{suffix}")
        for i, suffix in enumerate(rng.permutation([".mp4", ".MKV", ".avi"]))
    ]
    sources += ["/dev/video987", "/dev/nonexistent/camera"]
    for source in sources:
        err = refused(capsys, [*run, "--camera", f"front={source}"], "camera front", source, "does not exist")
        assert "OpenCV" not in err
    refused(capsys, [*run, "--camera", "front=0"], "--camera front", "OpenCV")
