"""`rynn-edge serve --openpi`: openpi's own client (`openpi-client` from PyPI, unmodified) gets the
server's metadata and the goals `predict` gives (inside the valid ranges); views are matched by name;
a malformed frame is a clear error for its sender while the server keeps serving every session."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import websockets.sync.client

# The real openpi-client from PyPI (installed by `make setup` with the dev extra, without its numpy<2 pin).
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from PIL import Image
from serving import expected_goals, start_robot_server, stop_robot_server

from rynn_edge.runtime.predictor import open_predictor
from rynn_edge.runtime.robot import so100

STATE = np.array([3.5, 120.0, 80.0, -10.0, 5.0, 30.0])
TASK = "pick up the cube"


@pytest.fixture(scope="module")
def served(so100_fp32):
    server = start_robot_server(so100_fp32[0], "--openpi", "--camera-map", "cam_high=front")
    yield server
    assert stop_robot_server(server) == 0


@pytest.fixture(scope="module")
def predictor(so100_fp32):
    return open_predictor(so100_fp32[0], backend="onnxruntime")


def views(frames, first: int = 0, second: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.asarray(Image.open(frames[i]).convert("RGB")) for i in (first, second))


def test_openpi_client_gets_the_metadata_and_the_goals_predict_gives(served, so100_fp32, predictor, frames):
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    meta = client.get_server_metadata()
    assert meta["policy"] == "rynnvla002" and meta["views"] == ["front", "wrist"]
    assert (
        meta["state_names"] == list(so100.MOTORS) and meta["action_horizon"] == predictor.backend.time_horizon
    )
    front, wrist = views(frames)
    reply = client.infer({"images": {"wrist": wrist, "cam_high": front}, "state": STATE, "prompt": TASK})
    assert reply["actions"].dtype == np.float32
    assert reply["actions"].shape == (predictor.backend.time_horizon, 6)
    assert np.allclose(
        reply["actions"], expected_goals(predictor, TASK, (front, wrist), STATE), rtol=0, atol=1e-5
    )


def test_goals_stay_inside_the_valid_ranges_and_are_counted(served, predictor, frames):
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    front, wrist = views(frames)
    far = np.array([170.0, 190.0, -150.0, 120.0, 5.0, 30.0])
    raw = predictor.predict([front, wrist], far, TASK).goals
    lower = np.r_[predictor.stats.state.min[:5], 0.0]
    upper = np.r_[predictor.stats.state.max[:5], 100.0]
    reply = client.infer({"images": {"front": front, "wrist": wrist}, "state": far, "prompt": TASK})
    assert reply["clipped"] == int(np.count_nonzero((raw < lower) | (raw > upper))) > 0
    assert np.allclose(reply["actions"], np.clip(raw, lower, upper), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\xc1 not msgpack", "frame is not msgpack"),
        ("a text frame", "expected a binary msgpack frame"),
        (msgpack_numpy.packb([1, 2, 3]), "observation must be a map"),
        (msgpack_numpy.packb({"state": [0.0] * 6, "prompt": TASK}), "missing images"),
        (
            msgpack_numpy.packb({b"__ndarray__": True, b"data": b"\0", b"dtype": "<f8", b"shape": [4]}),
            "array data",
        ),
        (
            msgpack_numpy.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}),
            "not numeric",
        ),
    ],
)
def test_a_malformed_frame_is_a_clear_error_and_every_session_is_still_served(
    served, predictor, frames, frame, reason
):
    good = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    front, wrist = views(frames, 2, 1)
    with websockets.sync.client.connect(f"ws://127.0.0.1:{served.port}", max_size=None) as bad:
        bad.recv()  # the metadata
        bad.send(frame)
        answer = bad.recv(timeout=30)
        assert isinstance(answer, str) and reason in answer and "Traceback" not in answer
        reply = good.infer({"images": {"front": front, "wrist": wrist}, "state": STATE, "prompt": TASK})
        assert np.allclose(
            reply["actions"], expected_goals(predictor, TASK, (front, wrist), STATE), rtol=0, atol=1e-5
        )
        bad.send(
            msgpack_numpy.packb({"images": {"front": front, "wrist": wrist}, "state": STATE, "prompt": TASK})
        )
        assert np.allclose(msgpack_numpy.unpackb(bad.recv(timeout=60))["actions"], reply["actions"])


@pytest.mark.parametrize(
    "images, reason",
    [
        ({"front": "f"}, "no camera for view(s) wrist"),
        ({"front": 0, "wrist": 0, "side": 0}, "unknown camera(s) side"),
        ({"front": np.zeros((0, 0, 3), np.uint8), "wrist": np.zeros((4, 4, 3), np.uint8)}, "a 0x0 frame"),
    ],
)
def test_a_bad_observation_is_refused_with_the_names_involved(served, images, reason):
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    with pytest.raises(RuntimeError, match="Error in inference server") as refused:
        client.infer({"images": images, "state": STATE, "prompt": TASK})
    assert reason in str(refused.value)


def test_sessions_are_served_concurrently_in_turn(served, predictor, frames):
    inputs = [views(frames, 0, 3), views(frames, 2, 1), views(frames, 1, 0)]
    got: dict[int, np.ndarray] = {}

    def robot(i: int) -> None:
        client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
        front, wrist = inputs[i]
        got[i] = client.infer({"images": {"front": front, "wrist": wrist}, "state": STATE, "prompt": TASK})[
            "actions"
        ]

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for i, images in enumerate(inputs):
        assert np.allclose(got[i], expected_goals(predictor, TASK, images, STATE), rtol=0, atol=1e-5)
