"""`rynn-edge serve --lerobot`: a client speaking LeRobot's AsyncInference messages over real gRPC gets
the goals `predict` gives for the same frames, state and task; a malicious pickle is refused and its
side effect never happens."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from PIL import Image

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.serving.lerobot import messages, pickles
from rynn_edge.runtime.serving.triton_server import free_port

STATE = [3.5, 120.0, 80.0, -10.0, 5.0, 30.0]
TASK = "pick up the cube"


class ClientUnpickler(pickle.Unpickler):
    """What LeRobot's client does with GetActions (it trusts the server): LeRobot's classes, torch."""

    def find_class(self, module, name):
        return pickles.STAND_INS.get((module, name)) or super().find_class(module, name)


class Client:
    """LeRobot's RobotClient side of the protocol, message for message."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=120)

        def unary(name, response):
            return self.channel.unary_unary(messages.method(name), lambda m: m.SerializeToString(),
                                            response.FromString)  # fmt: skip

        self.ready = unary("Ready", messages.Empty)
        self.instructions = unary("SendPolicyInstructions", messages.Empty)
        self.get_actions = unary("GetActions", messages.Actions)
        self.observations = self.channel.stream_unary(
            messages.method("SendObservations"), lambda m: m.SerializeToString(), messages.Empty.FromString
        )

    def send_observation(self, payload: bytes) -> None:
        self.observations(messages.chunked(payload), timeout=30)


@pytest.fixture(scope="module")
def endpoint(so100_fp32):
    art, _ = so100_fp32
    port = free_port()
    cmd = [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(art), "--lerobot", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    line = proc.stdout.readline()
    assert "ready: LeRobot async inference on 127.0.0.1" in line, "".join(err)
    yield Client(f"127.0.0.1:{port}"), err
    proc.terminate()
    assert proc.wait(30) == 0


def lerobot_observation(frames, timestep: int) -> bytes:
    raw = {f"{m}.pos": v for m, v in zip(so100.MOTORS, STATE, strict=True)}
    raw |= {
        "front": np.asarray(Image.open(frames[0]).convert("RGB")),
        "wrist": np.asarray(Image.open(frames[3])),
    }
    raw["task"] = TASK
    return pickles.dumps(
        pickles.TimedObservation(timestamp=100.0, timestep=timestep, observation=raw, must_go=True)
    )


def test_a_lerobot_client_gets_the_goals_predict_gives(capsys, endpoint, so100_fp32, frames):
    client, _ = endpoint
    art, _ = so100_fp32
    client.ready(messages.Empty(), timeout=30)
    features = {"observation.state": {"dtype": "float32", "shape": (6,), "names": list(so100.MOTORS)}}
    config = pickles.RemotePolicyConfig("act", "/some/path/never/loaded", features, actions_per_chunk=10)
    client.instructions(messages.PolicySetup(data=pickles.dumps(config)), timeout=30)
    client.send_observation(lerobot_observation(frames, timestep=7))
    reply = client.get_actions(messages.Empty(), timeout=120)
    timed = ClientUnpickler(io.BytesIO(reply.data)).load()

    capsys.readouterr()
    images = ["--image", str(frames[0]), "--image", str(frames[3])]
    state = ",".join(map(str, STATE))
    assert main(["predict", str(art), "--backend", "onnxruntime", *images, "--state", state,
                 "--instruction", TASK, "--json"]) == 0  # fmt: skip
    goals = np.asarray(json.loads(capsys.readouterr().out)["goals"])[:10]
    assert [a.timestep for a in timed] == list(range(7, 17))
    assert np.allclose([a.timestamp for a in timed], 100.0 + np.arange(10) / 30)
    got = np.stack([a.action.numpy() for a in timed])
    assert got.dtype == np.float32 and np.allclose(got, goals, rtol=1e-6, atol=1e-4)


class MakesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_malicious_pickle_is_refused_and_never_runs(endpoint, tmp_path):
    client, err = endpoint
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
    assert any("refused a pickle naming io.open" in line for line in err)


def test_oversized_messages_are_refused(endpoint):
    client, _ = endpoint
    with pytest.raises(grpc.RpcError) as refused:
        client.send_observation(b"\0" * (17 * 1024 * 1024))  # over the 16 MB default cap
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
