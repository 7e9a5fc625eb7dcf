"""`rynn-edge serve ARTIFACTS --lerobot`: LeRobot's `AsyncInference` gRPC service over a rynn-edge predictor.

The robot client sends `Ready`, then `SendPolicyInstructions` (a pickled RemotePolicyConfig: its policy
type and path are logged and ignored, the server serves the artifact it was started with; only
`actions_per_chunk` is used), then streams `SendObservations` (a pickled TimedObservation whose
observation is LeRobot's robot dict: "<motor>.pos" floats, camera arrays, "task") and polls `GetActions`
(a pickled list of TimedAction: absolute joint goals in LeRobot's SO100 units, degrees and gripper
0-100, the model's own training units, spaced 1/fps from the observation's time). Only the newest
observation is kept. Pickles are read through `pickles.safe_loads`; every message is size-capped.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.predictor import Predictor, open_predictor
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.serving.lerobot import messages, pickles

OBSERVATION_WAIT_S = 2.0  # GetActions with no new observation answers empty after this (as LeRobot's does)


def log(line: str) -> None:
    print(f"rynn-edge serve --lerobot: {line}", file=sys.stderr, flush=True)


class AsyncInference:
    def __init__(self, predictor: Predictor, fps: float, max_bytes: int):
        if predictor.robot != "so100":
            raise UserError(f"--lerobot drives SO100 arms; this artifact's robot is {predictor.robot}")
        self.predictor = predictor
        self.dt = 1.0 / fps
        self.max_bytes = max_bytes
        self.actions_per_chunk = predictor.backend.time_horizon
        self._pending: pickles.TimedObservation | None = None  # only the newest observation is kept
        self._cond = threading.Condition()
        self._lock = threading.Lock()

    # --- the four RPCs ---------------------------------------------------------------------------------
    def ready(self, _request: Any, context: grpc.ServicerContext) -> Any:
        log(f"client {context.peer()} ready")
        self._drop_pending()
        return messages.Empty()

    def send_policy_instructions(self, request: Any, context: grpc.ServicerContext) -> Any:
        config = self._load(request.data, pickles.RemotePolicyConfig, context)
        log(
            f"policy instructions from {context.peer()}: {config.policy_type!r} "
            f"{config.pretrained_name_or_path!r} ignored (serving this server's artifact); "
            f"actions_per_chunk {config.actions_per_chunk}"
        )
        if int(config.actions_per_chunk) >= 1:
            self.actions_per_chunk = min(int(config.actions_per_chunk), self.predictor.backend.time_horizon)
        return messages.Empty()

    def send_observations(self, stream: Any, context: grpc.ServicerContext) -> Any:
        try:
            data = messages.joined(stream, self.max_bytes)
        except UserError as err:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        observation = self._load(data, pickles.TimedObservation, context)
        with self._cond:
            self._pending = observation
            self._cond.notify_all()
        return messages.Empty()

    def get_actions(self, _request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending is not None, timeout=OBSERVATION_WAIT_S):
                return messages.Empty()
            observation, self._pending = self._pending, None
        try:
            with self._lock:  # one inference at a time; the predictor is not re-entrant
                chunk = self.timed_actions(observation)
        except UserError as err:
            log(f"observation #{observation.timestep} refused: {err}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return messages.Actions(data=pickles.dumps(chunk))

    # --- the model --------------------------------------------------------------------------------------
    def timed_actions(self, observation: pickles.TimedObservation) -> list[pickles.TimedAction]:
        import torch

        images, state, task = robot_inputs(observation.observation)
        goals = self.predictor.predict(images, state, task).goals[: self.actions_per_chunk]
        return [
            pickles.TimedAction(
                timestamp=observation.timestamp + i * self.dt,
                timestep=observation.timestep + i,
                action=torch.tensor(row, dtype=torch.float32),
            )
            for i, row in enumerate(goals)
        ]

    def _load(self, data: bytes, expected: type, context: grpc.ServicerContext) -> Any:
        if len(data) > self.max_bytes:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message over the {self.max_bytes} byte cap")
        try:
            return pickles.safe_loads(data, expected)
        except UserError as err:
            log(f"{context.peer()}: {err}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    def _drop_pending(self) -> None:
        with self._cond:
            self._pending = None


def robot_inputs(observation: dict) -> tuple[list[np.ndarray], np.ndarray, str]:
    """LeRobot's SO100 robot dict -> camera views (in the dict's order), state, task."""
    if not isinstance(observation, dict):
        raise UserError(f"observation must be LeRobot's robot dict, got {type(observation).__name__}")
    missing = [f"{m}.pos" for m in so100.MOTORS if f"{m}.pos" not in observation]
    if missing:
        raise UserError(f"observation has no {', '.join(missing)}")
    state = np.asarray([float(observation[f"{m}.pos"]) for m in so100.MOTORS], dtype=np.float64)
    images = [np.asarray(v) for v in observation.values() if isinstance(v, np.ndarray) and v.ndim == 3]
    task = observation.get("task")
    if not isinstance(task, str) or not task:
        raise UserError('observation has no "task" string (the instruction)')
    return images, state, task


def handlers(service: AsyncInference) -> grpc.GenericRpcHandler:
    def unary(fn: Callable, request: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request.FromString, response_serializer=lambda m: m.SerializeToString()
        )

    return grpc.method_handlers_generic_handler(
        messages.SERVICE,
        {
            "Ready": unary(service.ready, messages.Empty),
            "SendPolicyInstructions": unary(service.send_policy_instructions, messages.PolicySetup),
            "GetActions": unary(service.get_actions, messages.Empty),
            "SendObservations": grpc.stream_unary_rpc_method_handler(
                service.send_observations,
                request_deserializer=messages.Observation.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            ),
        },
    )


def serve_lerobot(args: argparse.Namespace, wait: Callable[[], None]) -> None:
    predictor = open_predictor(args.artifacts, backend=args.backend, server=args.server)
    max_bytes = int(args.max_message_mb * 1024 * 1024)
    service = AsyncInference(predictor, args.fps, max_bytes)
    options = [("grpc.max_receive_message_length", min(max_bytes, messages.CHUNK_BYTES + 1024)),
               ("grpc.max_send_message_length", max_bytes)]  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    server.add_generic_rpc_handlers((handlers(service),))
    address = f"{args.host}:{args.port}"
    if server.add_insecure_port(address) == 0:
        raise UserError(f"--port {args.port}: cannot listen on {address} (in use?)")
    server.start()
    print(
        f"rynn-edge serve: ready: LeRobot async inference on {address} (robot so100, T "
        f"{predictor.backend.time_horizon}, backend {predictor.backend.name}, messages <= {max_bytes} bytes)",
        flush=True,
    )
    try:
        wait()
    finally:
        server.stop(grace=2).wait()
