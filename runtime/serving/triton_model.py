"""Inside Triton's Python backend: `rynn_step`, one whole control step per request.

The server holds the predictor (tokenizer, tables, stats, the networks and the KV cache) over the
artifact the repository sits in, and runs exactly what `Predictor.predict` (or, in mode world_model,
`world_model.imagine`) runs in-process; the request carries raw frames, state and the instruction
(`serving/wire.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rynn_edge.runtime.serving import wire
from rynn_edge.runtime.serving.wire import model_parameters, respond_with_error
from rynn_edge.runtime.world_model import imagine


class StepModel:
    here: Path  # the model's version folder, ARTIFACTS/triton/rynn_step/1 (set by the written model.py)

    def initialize(self, args: dict[str, Any]) -> None:
        from rynn_edge.runtime.predictor import open_predictor

        params = model_parameters(json.loads(args["model_config"]))
        self.predictor = open_predictor(self.here.parents[2], backend=params.get("backend", "onnxruntime"))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb

        responses = []
        for request in requests:
            try:
                arrays = {
                    t.name: tensor.as_numpy()
                    for t in wire.STEP_INPUTS
                    if (tensor := pb.get_input_tensor_by_name(request, t.name)) is not None
                }
                action_dim = self.predictor.backend.action_dim
                if wire.request_mode(arrays) == wire.WORLD_MODEL:
                    imagined = imagine(self.predictor, **wire.world_arguments(arrays))
                    outputs = wire.world_outputs(imagined, action_dim)
                else:
                    prediction = self.predictor.predict(**wire.step_arguments(arrays))
                    outputs = wire.step_outputs(prediction, action_dim)
                responses.append(pb.InferenceResponse([pb.Tensor(n, a) for n, a in outputs.items()]))
            except Exception as err:
                responses.append(respond_with_error(pb, err))
        return responses
