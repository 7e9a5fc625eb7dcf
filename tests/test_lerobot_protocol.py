"""`rynn-edge serve --lerobot`: clients speaking LeRobot's AsyncInference messages over real gRPC get the
goals `predict` gives for their own observation (views matched by name, goals inside the valid ranges),
each in its own session; clients that cannot be served are refused at SendPolicyInstructions (where
LeRobot's `RobotClient.start()` returns False); damaged messages are clear INVALID_ARGUMENTs; stalled
uploads hold no thread; a malicious pickle is refused and its side effect never happens."""

from __future__ import annotations

import io
import pickle
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from serving import expected_goals, start_robot_server, stop_robot_server

from rynn_edge.runtime.predictor import open_predictor
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.serving.lerobot import messages, pickles

STATE = [3.5, 120.0, 80.0, -10.0, 5.0, 30.0]
OTHER_STATE = [-20.0, 60.0, 110.0, 15.0, -30.0, 55.0]
TASK = "pick up the cube"
STREAM_TIMEOUT_S = 2


class ClientUnpickler(pickle.Unpickler):
    """What LeRobot's client does with GetActions (it trusts the server): LeRobot's classes, torch."""

    def find_class(self, module, name):
        return pickles.STAND_INS.get((module, name)) or super().find_class(module, name)


def features(*cameras: str) -> dict:
    """LeRobot's `lerobot_features` for an SO100 follower with these cameras (in the client's order)."""
    state = {"dtype": "float32", "shape": (6,), "names": [f"{m}.pos" for m in so100.MOTORS]}
    images = {f"observation.images.{c}": {"dtype": "image", "shape": (480, 640, 3)} for c in cameras}
    return {"observation.state": state, **images}


class Client:
    """LeRobot's RobotClient side of the protocol, message for message, on its own connection (its
    own subchannel: two clients in one process are two peers, as two robots are)."""

    def __init__(self, port: int):
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        grpc.channel_ready_future(self.channel).result(timeout=60)

        def unary(name, response):
            return self.channel.unary_unary(messages.method(name), lambda m: m.SerializeToString(),
                                            response.FromString)  # fmt: skip

        self.ready = unary("Ready", messages.Empty)
        self.instructions = unary("SendPolicyInstructions", messages.Empty)
        self.get_actions_raw = unary("GetActions", messages.Actions)
        self.observations = self.channel.stream_unary(
            messages.method("SendObservations"), lambda m: m.SerializeToString(), messages.Empty.FromString
        )
        self.error: grpc.RpcError | None = None

    def start(self, config: pickles.RemotePolicyConfig) -> bool:
        """What `RobotClient.start()` does: Ready, then the policy instructions; False on a gRPC error."""
        try:
            self.ready(messages.Empty(), timeout=30)
            self.instructions(messages.PolicySetup(data=pickles.dumps(config)), timeout=30)
        except grpc.RpcError as err:
            self.error = err
            return False
        return True

    def send_observation(self, payload: bytes) -> None:
        self.observations(messages.chunked(payload), timeout=30)

    def get_actions(self) -> list[pickles.TimedAction]:
        return ClientUnpickler(io.BytesIO(self.get_actions_raw(messages.Empty(), timeout=120).data)).load()


def config(
    *cameras: str, chunk=10, policy_type="rynnvla002", path=None, art=None
) -> pickles.RemotePolicyConfig:
    return pickles.RemotePolicyConfig(
        policy_type, path or art.name, features(*cameras), actions_per_chunk=chunk
    )


@pytest.fixture(scope="module")
def served(so100_fp32):
    art, _ = so100_fp32
    server = start_robot_server(art, "--lerobot", "--camera-map", "top=front",
                                "--stream-timeout", str(STREAM_TIMEOUT_S))  # fmt: skip
    yield server
    assert stop_robot_server(server) == 0


@pytest.fixture(scope="module")
def predictor(so100_fp32):
    return open_predictor(so100_fp32[0], backend="onnxruntime")


def started(served, art, *cameras: str, chunk: int = 10) -> Client:
    client = Client(served.port)
    assert client.start(config(*cameras or ("front", "wrist"), chunk=chunk, art=art)), client.error
    return client


def views(frames, first: int = 0, second: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(Image.open(frames[first]).convert("RGB")), np.asarray(
        Image.open(frames[second]).convert("RGB")
    )


def observation(cameras: dict, state=STATE, timestep: int = 7, damage: dict | None = None) -> bytes:
    raw = {f"{m}.pos": v for m, v in zip(so100.MOTORS, state, strict=True)} | cameras | {"task": TASK}
    timed = pickles.TimedObservation(timestamp=100.0, timestep=timestep, observation=raw | (damage or {}))
    return pickles.dumps(timed)


def test_a_lerobot_client_gets_the_goals_predict_gives(served, so100_fp32, predictor, frames):
    assert "warm-up" in served.ready_line
    client = started(served, so100_fp32[0])
    front, wrist = views(frames)
    client.send_observation(observation({"front": front, "wrist": wrist}))
    timed = client.get_actions()
    assert [a.timestep for a in timed] == list(range(7, 17))
    assert np.allclose([a.timestamp for a in timed], 100.0 + np.arange(10) / 30)
    got = np.stack([a.action.numpy() for a in timed])
    assert got.dtype == np.float32
    assert np.allclose(got, expected_goals(predictor, TASK, (front, wrist), STATE)[:10], rtol=1e-6, atol=1e-4)


def test_two_robots_each_get_their_own_chunk_and_settings(served, so100_fp32, predictor, frames):
    art = so100_fp32[0]
    a, b = started(served, art, chunk=10), started(served, art, chunk=4)
    inputs = {a: (views(frames, 0, 3), STATE), b: (views(frames, 2, 1), OTHER_STATE)}
    for client, ((front, wrist), state) in inputs.items():
        client.send_observation(observation({"front": front, "wrist": wrist}, state=state))
    got: dict = {}
    threads = [threading.Thread(target=lambda c=c: got.__setitem__(c, c.get_actions())) for c in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for client, length in ((a, 10), (b, 4)):
        (front, wrist), state = inputs[client]
        chunk = np.stack([t.action.numpy() for t in got[client]])
        assert chunk.shape == (length, 6)
        assert np.allclose(
            chunk, expected_goals(predictor, TASK, (front, wrist), state)[:length], rtol=1e-6, atol=1e-4
        )


def test_views_are_matched_by_name_not_order(served, so100_fp32, predictor, frames):
    client = started(served, so100_fp32[0], "wrist", "top")  # wrist first; top served as front
    front, wrist = views(frames)
    client.send_observation(observation({"wrist": wrist, "top": front}))
    got = np.stack([t.action.numpy() for t in client.get_actions()])
    assert np.allclose(got, expected_goals(predictor, TASK, (front, wrist), STATE)[:10], rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (
            {"policy_type": "act"},
            "policy type 'act' is not served here; this server serves policy type 'rynnvla002'",
        ),
        ({"path": "lerobot/smolvla_base"}, "policy path 'lerobot/smolvla_base' is not served here"),
        ({"cameras": ("front",)}, "no camera for view(s) wrist"),
        ({"cameras": ("front", "wrist", "side")}, "unknown camera(s) side"),
        ({"cameras": ("front", "top", "wrist")}, "more than one camera for view(s) front"),
        ({"chunk": None}, "actions_per_chunk must be an integer 1-"),
        ({"chunk": 10_000}, "got 10000"),
    ],
)
def test_a_client_that_cannot_be_served_is_refused_at_start(served, so100_fp32, kwargs, reason):
    cameras = kwargs.pop("cameras", ("front", "wrist"))
    client = Client(served.port)
    assert not client.start(config(*cameras, art=so100_fp32[0], **{"chunk": 10, **kwargs}))
    assert client.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in client.error.details()


def test_the_artifact_may_be_named_by_its_path(served, so100_fp32):
    art = so100_fp32[0]
    client = Client(served.port)
    for path in (str(art), f"{art}/", str(art.resolve())):
        assert client.start(pickles.RemotePolicyConfig("rynnvla002", path, features("front", "wrist"), 5))


@pytest.mark.parametrize(
    "damage, reason",
    [
        ({"shoulder_lift.pos": "a sentence about joints"}, "shoulder_lift must be a finite number"),
        ({"elbow_flex.pos": float("nan")}, "elbow_flex must be a finite number"),
        ({"front": np.zeros((0, 0, 3), np.uint8)}, "camera 'front': a 0x0 frame"),
        ({"wrist": np.zeros((48, 64), np.uint8)}, "camera 'wrist': expected an HxWx3 uint8 RGB array"),
        ({"side": np.zeros((48, 64, 3), np.uint8)}, "camera(s) side not declared"),
        ({"task": 42}, "non-empty string"),
        ({7: np.zeros((48, 64, 3), np.uint8)}, "camera(s) 7 not declared"),
    ],
)
def test_a_damaged_first_observation_refuses_the_session_once(served, so100_fp32, frames, damage, reason):
    client = started(served, so100_fp32[0])
    front, wrist = views(frames)
    with pytest.raises(grpc.RpcError) as refused:
        client.send_observation(observation({"front": front, "wrist": wrist}, damage=damage))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in refused.value.details() and "Traceback" not in refused.value.details()
    for _ in range(5):  # every later call carries the reason; the log says it once
        with pytest.raises(grpc.RpcError) as later:
            client.get_actions()
        assert later.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in later.value.details()
    time.sleep(0.5)
    assert sum(reason in line for line in served.stderr) <= 2, served.stderr


def test_a_damaged_later_observation_is_refused_and_the_session_goes_on(
    served, so100_fp32, frames, predictor
):
    client = started(served, so100_fp32[0], chunk=3)
    front, wrist = views(frames)
    client.send_observation(observation({"front": front, "wrist": wrist}))
    with pytest.raises(grpc.RpcError) as refused:
        client.send_observation(observation({"front": front, "wrist": wrist}, damage={"gripper.pos": "open"}))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = np.stack([t.action.numpy() for t in client.get_actions()])
    assert np.allclose(got, expected_goals(predictor, TASK, (front, wrist), STATE)[:3], rtol=1e-6, atol=1e-4)


def test_goals_stay_inside_the_valid_ranges_and_are_counted(served, so100_fp32, predictor, frames):
    client = started(served, so100_fp32[0])
    front, wrist = views(frames)
    far = [170.0, 190.0, -150.0, 120.0, 5.0, 30.0]  # the goals are offsets from this: they leave the ranges
    raw = predictor.predict([front, wrist], far, TASK).goals[:10]
    lower = np.r_[predictor.stats.state.min[:5], 0.0]
    upper = np.r_[predictor.stats.state.max[:5], 100.0]
    outside = int(np.count_nonzero((raw < lower) | (raw > upper)))
    assert outside > 0
    client.send_observation(observation({"front": front, "wrist": wrist}, state=far))
    got = np.stack([t.action.numpy() for t in client.get_actions()])
    assert np.all(got >= lower.astype(np.float32)) and np.all(got <= upper.astype(np.float32))
    assert np.allclose(got, np.clip(raw, lower, upper), rtol=1e-6, atol=1e-4)
    time.sleep(0.5)
    counted = [line for line in served.stderr if "moved into the valid ranges" in line]
    full = predictor.predict([front, wrist], far, TASK).goals
    assert f"{int(np.count_nonzero((full < lower) | (full > upper)))} goal value(s)" in counted[-1]


def test_stalled_uploads_hold_no_thread_and_time_out(served, so100_fp32):
    release = threading.Event()

    def stalled():
        yield messages.Observation(transfer_state=messages.BEGIN, data=b"\0" * 1024)
        release.wait(30)

    stallers = [started(served, so100_fp32[0]) for _ in range(4)]
    errors: list = []

    def upload(client):
        try:
            client.observations(stalled(), timeout=30)
        except grpc.RpcError as err:
            errors.append(err)

    threads = [threading.Thread(target=upload, args=(c,)) for c in stallers]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    fifth = Client(served.port)
    fifth.ready(messages.Empty(), timeout=STREAM_TIMEOUT_S / 2)  # served while four uploads stall
    for thread in threads:
        thread.join(STREAM_TIMEOUT_S + 10)
    release.set()
    assert len(errors) == 4
    assert all(
        e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--stream-timeout" in e.details() for e in errors
    )


class MakesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_malicious_pickle_is_refused_and_never_runs(served, so100_fp32, tmp_path):
    client = started(served, so100_fp32[0])
    target = tmp_path / "pwned"
    for send in (
        lambda payload: client.instructions(messages.PolicySetup(data=payload), timeout=30),
        client.send_observation,
    ):
        with pytest.raises(grpc.RpcError) as refused:
            send(pickles.dumps(pickles.TimedObservation(0.0, 0, {"x": MakesAFile(target)})))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "refused a pickle naming io.open" in refused.value.details()
        assert not target.exists()
    assert any("refused a pickle naming io.open" in line for line in served.stderr)


def test_oversized_messages_are_refused(served, so100_fp32):
    client = started(served, so100_fp32[0])
    with pytest.raises(grpc.RpcError) as refused:
        client.send_observation(b"\0" * (17 * 1024 * 1024))  # over the 16 MB default cap
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_calls_without_a_session_are_told_what_to_send(served):
    client = Client(served.port)
    with pytest.raises(grpc.RpcError) as refused:
        client.get_actions()
    assert (
        refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "send Ready" in refused.value.details()
    )


def serve(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--fps", "0"], "--fps"),
        (["--fps", "-5"], "--fps"),
        (["--max-message-mb", "-1"], "--max-message-mb"),
        (["--stream-timeout", "0"], "--stream-timeout"),
        (["--camera-map", "front"], "CLIENT_NAME=VIEW"),
        (["--camera-map", "top=side"], "--camera-map names view(s) side"),
    ],
)
def test_bad_serve_flags_are_refused(so100_fp32, flags, named):
    done = serve(str(so100_fp32[0]), "--lerobot", "--port", "0", *flags)
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("protocol", ["--lerobot", "--openpi"])
def test_a_busy_port_is_a_clear_error(so100_fp32, protocol):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = serve(str(so100_fp32[0]), protocol, "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"--port {port}: cannot listen" in done.stderr and "Traceback" not in done.stderr
