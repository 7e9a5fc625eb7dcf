"""`rynn-edge predict` / `imagine` on tiny bundles: the JSON contract, its internal consistency, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.tokens import vocab as V
from rynn_edge.runtime.tokens.prompt import action_tokens_to_normalized, denormalize
from rynn_edge.runtime.tokens.stats import load_stats

SO100_STATE = "3.5,120.0,80.25,-10.0,5.0,30.0"
LIBERO_STATE = "0.1,0.0,1.0,3.0,0.5,-0.2,0.01,-0.01"


def _run(capsys: pytest.CaptureFixture, bundle: dict[str, Path], *args: str, command: str = "predict"):
    raw = [str(bundle["model"]), "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"])]
    code = main([command, *raw, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _predict(capsys, bundle, images, state, *extra: str) -> dict:
    image_args = [a for p in images for a in ("--image", str(p))]
    code, out, err = _run(
        capsys,
        bundle,
        *image_args,
        "--state",
        state,
        "--instruction",
        "Place the block inside the circle.",
        "--json",
        *extra,
    )
    assert code == 0, err
    return json.loads(out)


def test_so100_continuous_json_contract(capsys, so100_bundle, frames) -> None:
    result = _predict(capsys, so100_bundle, frames[:2], SO100_STATE)
    ids = result["prompt_ids"]
    assert ids[0] == 0 and ids[-1] == V.TURN_SEP_ID
    assert ids.count(V.IMAGE_START_ID) == 2 and ids.count(V.STATE_START_ID) == 1
    assert [len(c) for c in result["vq_codes"]] == [256, 256]
    assert all(0 <= c < 8192 for codes in result["vq_codes"] for c in codes)
    normalized = np.asarray(result["actions_normalized"])
    actions = np.asarray(result["actions"])
    goals = np.asarray(result["goals"])
    assert normalized.shape == actions.shape == goals.shape == (20, 6)
    # The head output is float32 and de-normalisation keeps (v + 1) / 2 in float32, as upstream does.
    expected = denormalize(normalized.astype(np.float32), load_stats("so100").action)
    np.testing.assert_array_equal(actions, expected)
    state = np.array([float(v) for v in SO100_STATE.split(",")])
    np.testing.assert_allclose(goals[:, :5], actions[:, :5] + state[:5])
    np.testing.assert_array_equal(goals[:, 5], actions[:, 5])  # gripper is absolute


def test_prediction_is_deterministic_and_depends_on_the_images(capsys, so100_bundle, frames) -> None:
    first = _predict(capsys, so100_bundle, frames[:2], SO100_STATE)
    again = _predict(capsys, so100_bundle, frames[:2], SO100_STATE)
    swapped = _predict(capsys, so100_bundle, [frames[1], frames[0]], SO100_STATE)
    assert first == again
    assert swapped["vq_codes"] == first["vq_codes"][::-1]
    assert swapped["actions_normalized"] != first["actions_normalized"]


def test_libero_two_and_four_images(capsys, libero_bundle, frames) -> None:
    two = _predict(capsys, libero_bundle, frames[:2], LIBERO_STATE)
    four = _predict(capsys, libero_bundle, frames, LIBERO_STATE)
    assert np.asarray(two["actions"]).shape == (5, 7) and "goals" not in two
    assert len(four["prompt_ids"]) == len(two["prompt_ids"]) + 2 * 276
    assert four["vq_codes"][:2] == two["vq_codes"]


def test_discrete_mode_reports_generated_tokens(capsys, so100_bundle, frames) -> None:
    result = _predict(
        capsys, so100_bundle, frames[:2], SO100_STATE, "--mode", "discrete", "--max-new-tokens", "12"
    )
    tokens = result["generated_tokens"]
    assert len(tokens) == 12 or tokens[-1] == V.TURN_SEP_ID
    # Random weights rarely emit blocks (tests/test_decoding.py crafts weights that do): parse consistently.
    parsed = action_tokens_to_normalized(tokens, 6)
    assert np.asarray(result["actions_normalized"]).reshape(-1, 6).tolist() == parsed.tolist()


@pytest.mark.parametrize(
    ("images", "state", "message"),
    [
        (1, SO100_STATE, "take 2 images"),
        (2, "1,2,3", "state has 3 values"),
        (2, "1,2,x", "comma-separated numbers"),
    ],
)
def test_bad_input_is_named(capsys, so100_bundle, frames, images, state, message) -> None:
    image_args = [a for p in frames[:images] for a in ("--image", str(p))]
    code, _, err = _run(capsys, so100_bundle, *image_args, "--state", state, "--instruction", "go")
    assert code == 2 and message in err


def test_unreadable_or_missing_image_is_named(capsys, so100_bundle, frames, tmp_path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    for path in (junk, tmp_path / "missing.png"):
        code, _, err = _run(
            capsys,
            so100_bundle,
            "--image",
            str(frames[0]),
            "--image",
            str(path),
            "--state",
            SO100_STATE,
            "--instruction",
            "go",
        )
        assert code == 2 and str(path) in err


def test_missing_tokenizer_flag(capsys, so100_bundle, frames) -> None:
    code = main(
        [
            "predict",
            str(so100_bundle["model"]),
            "--vq",
            str(so100_bundle["vq"]),
            "--image",
            str(frames[0]),
            "--state",
            "1",
            "--instruction",
            "go",
        ]
    )
    assert code == 2 and "--tokenizer" in capsys.readouterr().err


def test_imagine_writes_a_well_formed_image(capsys, so100_bundle, frames, tmp_path) -> None:
    out = tmp_path / "next.png"
    args = ("--image", str(frames[0]), "--action", "1,2,3,4,5,20", "--prompt", "lerobot", "--out", str(out))
    code, stdout, _ = _run(capsys, so100_bundle, *args, "--json", command="imagine")
    result = json.loads(stdout)
    assert code == 0 and result["problems"] == []
    tokens = result["generated_tokens"]
    assert (
        len(tokens) == 277
        and tokens[0] == V.IMAGE_START_ID
        and tokens[-2:] == [V.IMAGE_END_ID, V.TURN_SEP_ID]
    )
    assert Image.open(out).size == (256, 256)
    assert result["prompt_ids"].count(V.ACTION_START_ID) == 1
