"""Inside Triton's Python backend: one exported stage graph on onnxruntime (the per-stage models).

Light on purpose (numpy + onnxruntime, no torch): each Python-backend model is its own stub process.
The graph is read where the artifact keeps it (ARTIFACTS/<stage>.onnx beside its external data), so
the weights file is neither copied nor reached through a link out of a model folder, and only after
its hashes match the manifest (a model is named after its stage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rynn_edge.runtime.serving.wire import respond_with_error


class StageModel:
    here: Path  # the model's version folder, ARTIFACTS/triton/<model>/1 (set by the written model.py)

    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime as ort

        from rynn_edge.runtime.backends.artifact import Artifact
        from rynn_edge.runtime.backends.onnxruntime import session_options

        config = json.loads(args["model_config"])
        # Only this stage's files are hashed here (every model hashing all the weights would be slow).
        artifact = Artifact.open(self.here.parents[2], check_device=False, stage=config["name"])
        graph = artifact.stage_file(config["name"])
        providers: list = ["CPUExecutionProvider"]
        gpu = args.get("model_instance_kind") == "GPU"
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args["model_instance_device_id"])
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(str(graph), session_options(), providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb

        responses = []
        for request in requests:
            try:
                feeds = {n: pb.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
                outs = self.session.run(self.outputs, feeds)
                responses.append(
                    pb.InferenceResponse([pb.Tensor(n, o) for n, o in zip(self.outputs, outs, strict=True)])
                )
            except Exception as err:  # one bad request must not take the model down
                responses.append(respond_with_error(pb, err))
        return responses
