"""The robot side of a model served by Triton: one `rynn_step` request per control step.

Not a per-stage backend on purpose: decoding over the network would ship the KV cache every token
(about half a gigabyte per step for 7B). The server runs the whole query (resize, VQ codes, prompt,
networks, parsing, goals) and this backend sends the raw frames, state and instruction; the predictor
hands it the query whole (`query`). Every call has a client timeout, so a server that stops answering
becomes an error here (the control loop then stops the arm), never a hang.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.embodiment import embodiment
from rynn_edge.runtime.serving import wire

INSTALL_HINT = "pip install 'rynn-edge[serve]'"


def _client_module(server: str) -> tuple[Any, str]:
    """tritonclient's gRPC client for HOST:PORT, or its HTTP client for http://HOST:PORT."""
    try:
        if server.startswith("http://"):
            import tritonclient.http as client

            return client, server.removeprefix("http://")
        import tritonclient.grpc as client
    except ImportError:
        raise UserError(f"--backend triton needs tritonclient: {INSTALL_HINT}") from None
    return client, server.removeprefix("grpc://")


def _views(images: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB")) if hasattr(image, "convert") else image for image in images]


def _nbytes(array: np.ndarray) -> int:
    return sum(map(len, array.reshape(-1))) if array.dtype == object else array.nbytes


class TritonBackend:
    name = "triton"

    def __init__(self, server: str, model: str = wire.STEP_MODEL, timeout_s: float = 30.0):
        self.server = server
        self.model = model
        self.timeout_s = timeout_s
        self._lib, url = _client_module(server)
        self._client = self._lib.InferenceServerClient(url)
        self._grpc = self._lib.__name__.endswith("grpc")
        config = self._call(self._model_config)
        params = wire.model_parameters(config)
        if wire.METADATA_KEY not in params:
            raise UserError(f"{server}: model {model!r} is not a rynn-edge whole-step model (no metadata)")
        meta = wire.read_metadata(params[wire.METADATA_KEY])
        self.robot: str | None = meta["robot"]
        self.time_horizon = int(meta["time_horizon"])
        self.action_dim = int(meta["action_dim"])
        self.image_size = int(meta["image_size"])
        self.stats: dict = meta["stats"]
        self.hidden_size = int(meta.get("hidden_size") or 0)  # 0: a repository exported before it was stated
        self.precision: str = meta.get("precision", "unknown")
        self._has_goals = embodiment(self.robot, self.action_dim).goals is not None
        self.last_request_bytes = 0
        self.last_response_bytes = 0

    def _model_config(self) -> dict:
        if self._grpc:
            reply = self._client.get_model_config(self.model, as_json=True, client_timeout=self.timeout_s)
            return reply["config"]
        return self._client.get_model_config(self.model, timeout=self.timeout_s)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._lib.InferenceServerException as err:
            raise UserError(f"triton server {self.server}: {err.message() or err}") from None

    def query(
        self,
        images: Sequence[Any],
        state: np.ndarray,
        instruction: str,
        mode: str,
        max_new_tokens: int | None,
        parallel: bool,
    ) -> dict[str, Any]:
        """One whole step on the server -> `Prediction` keyword arguments."""
        arrays = wire.step_inputs(_views(images), state, instruction, mode, max_new_tokens, parallel)
        return wire.prediction_fields(self._request(arrays), mode, self._has_goals)

    def imagine(
        self,
        images: Sequence[Any],
        action: np.ndarray,
        sentence: str,
        image_size: int,
        unconstrained: bool,
        max_new_tokens: int | None,
    ) -> dict[str, Any]:
        """One world-model query on the server -> `Imagined` keyword arguments."""
        views = _views(images)
        arrays = wire.world_inputs(views, action, sentence, image_size, unconstrained, max_new_tokens)
        return wire.imagined_fields(self._request(arrays))

    def _request(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in arrays.items():
            dtype = next(t.dtype for t in wire.STEP_INPUTS if t.name == name)
            tensor = self._lib.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._lib.InferRequestedOutput(t.name) for t in wire.STEP_OUTPUTS]
        result = self._call(self._infer, inputs, outputs)
        response = {t.name: result.as_numpy(t.name) for t in wire.STEP_OUTPUTS}
        self.last_request_bytes = sum(_nbytes(a) for a in arrays.values())
        self.last_response_bytes = sum(_nbytes(a) for a in response.values())
        return response

    def _infer(self, inputs, outputs):
        if self._grpc:
            return self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        return self._client.infer(self.model, inputs, outputs=outputs, timeout=self.timeout_s)

    def _whole_steps_only(self, *_args, **_kwargs):
        raise UserError(
            "--backend triton runs whole queries on the server (predict, imagine, run, bench); per-stage "
            "calls over the network would ship the KV cache every token"
        )

    vq_encode = actions = step_model = vq_decode = _whole_steps_only
