"""`rynn-edge serve ARTIFACTS --lerobot`: LeRobot's `AsyncInference` gRPC service over a rynn-edge predictor.

A robot client sends `Ready`, then `SendPolicyInstructions` (a pickled RemotePolicyConfig), then streams
`SendObservations` (a pickled TimedObservation: LeRobot's robot dict, "<motor>.pos" floats, camera
arrays by name, "task") and polls `GetActions` (a pickled list of TimedAction: absolute joint goals in
LeRobot's SO100 units, degrees and gripper 0-100, spaced 1/fps from the observation's time).

Sessions: LeRobot's messages carry no client id, so a session is a gRPC peer (one client's connection,
address and port) from the `Ready` that starts it; a new `Ready` from that peer starts afresh. Each
session keeps its own settings and only its newest observation. The server runs on grpc.aio: a stalled
upload holds no thread, and each upload has a time limit (`--stream-timeout`) and a size cap.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import grpc
import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.serving.lerobot import messages, pickles
from rynn_edge.runtime.serving.policy import (
    ServedPolicy,
    SessionLog,
    check_state,
    check_task,
    until_stopped,
)

OBSERVATION_WAIT_S = 2.0  # GetActions with no new observation answers empty after this (as LeRobot's does)
MAX_SESSIONS = 64
IDLE_SESSION_S = 600.0  # a session silent this long makes room for a new one
MAX_DETAILS = 2000  # characters of a refusal sent back (a message may quote what the client sent)
IMAGES = "observation.images."
STATE_NAMES = [f"{m}.pos" for m in so100.MOTORS]


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Observed:
    timestamp: float
    timestep: int
    images: list[np.ndarray]
    state: np.ndarray
    task: str


@dataclass
class Session:
    peer: str
    actions_per_chunk: int | None = None  # None until SendPolicyInstructions is accepted
    cameras: list[str] = field(default_factory=list)  # the client's names, in prompt order
    checked: bool = False  # the first observation passed
    refused: str | None = None  # a first observation that failed: every later call gets this
    pending: Observed | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: int = 0
    clipped: int = 0
    seen: float = field(default_factory=time.monotonic)


class AsyncInference:
    def __init__(self, policy: ServedPolicy, fps: float, max_bytes: int, stream_timeout_s: float):
        self.policy = policy
        self.dt = 1.0 / fps
        self.max_bytes = max_bytes
        self.stream_timeout_s = stream_timeout_s
        self.sessions: dict[str, Session] = {}
        self.log = SessionLog("rynn-edge serve --lerobot")

    # --- the four RPCs ---------------------------------------------------------------------------------
    async def ready(self, _request: Any, context: grpc.aio.ServicerContext) -> Any:
        peer = context.peer()
        now = time.monotonic()
        for old in [p for p, s in self.sessions.items() if now - s.seen > IDLE_SESSION_S]:
            self._end(old, "idle")
        if peer not in self.sessions and len(self.sessions) >= MAX_SESSIONS:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this server holds {MAX_SESSIONS} sessions")
        if peer in self.sessions:
            self._end(peer, "restarted by Ready")
        self.sessions[peer] = Session(peer)
        self.log.line(f"{peer}: session started ({len(self.sessions)} open)")
        return messages.Empty()

    async def send_policy_instructions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        session = self._session(context)
        try:
            config = self._load(request.data, pickles.RemotePolicyConfig)
            self.policy.check_identity(config.policy_type, config.pretrained_name_or_path)
            chunk = config.actions_per_chunk
            horizon = self.policy.horizon
            if isinstance(chunk, bool) or not isinstance(chunk, Integral) or not 1 <= chunk <= horizon:
                raise UserError(
                    f"actions_per_chunk must be an integer 1-{horizon} (this model's T), got {chunk!r}"
                )
            cameras = self._declared_cameras(config.lerobot_features)
        except UserError as err:
            self.log.limited(session.peer, "instructions", f"refused: {err}")
            raise
        session.actions_per_chunk, session.cameras = int(chunk), cameras
        self.log.line(
            f"{session.peer}: serving {config.policy_type} {config.pretrained_name_or_path!r}, "
            f"actions_per_chunk {session.actions_per_chunk}, cameras {', '.join(cameras)}"
        )
        return messages.Empty()

    async def send_observations(self, stream: Any, context: grpc.aio.ServicerContext) -> Any:
        session = self._configured(context)
        data = await self._upload(stream)
        try:
            observed = self._observed(self._load(data, pickles.TimedObservation), session)
        except UserError as err:
            if not session.checked:  # what only an observation shows is refused once, for the session
                session.refused = f"first observation refused: {err}"
            self.log.limited(session.peer, "observation", f"refused: {err}")
            raise
        session.checked = True
        session.pending = observed
        session.arrived.set()
        return messages.Empty()

    async def get_actions(self, _request: Any, context: grpc.aio.ServicerContext) -> Any:
        session = self._configured(context)
        try:
            await asyncio.wait_for(session.arrived.wait(), OBSERVATION_WAIT_S)
        except asyncio.TimeoutError:
            return messages.Actions()
        observed, session.pending = session.pending, None
        session.arrived.clear()
        if observed is None:  # another GetActions of this session took it
            return messages.Actions()
        chunk = await self.policy.run(observed.images, observed.state, observed.task)
        session.chunks += 1
        if chunk.clipped:
            session.clipped += chunk.clipped
            self.log.limited(
                session.peer,
                "clipped",
                f"{chunk.clipped} goal value(s) of chunk #{session.chunks} moved into the valid ranges "
                f"({session.clipped} in this session)",
            )
        return messages.Actions(data=pickles.dumps(self.timed_actions(observed, chunk.goals, session)))

    # --- helpers ---------------------------------------------------------------------------------------
    def timed_actions(self, observed: Observed, goals: np.ndarray, session: Session) -> list:
        import torch

        return [
            pickles.TimedAction(
                timestamp=observed.timestamp + i * self.dt,
                timestep=observed.timestep + i,
                action=torch.tensor(row, dtype=torch.float32),
            )
            for i, row in enumerate(goals[: session.actions_per_chunk])
        ]

    def _session(self, context: grpc.aio.ServicerContext) -> Session:
        session = self.sessions.get(context.peer())
        if session is None:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no session for this connection: send Ready, then SendPolicyInstructions (RobotClient.start)",
            )
        session.seen = time.monotonic()
        return session

    def _configured(self, context: grpc.aio.ServicerContext) -> Session:
        session = self._session(context)
        if session.actions_per_chunk is None:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "send SendPolicyInstructions first")
        if session.refused:
            self.log.limited(session.peer, "refused session", session.refused)
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, session.refused)
        return session

    def _end(self, peer: str, why: str) -> None:
        session = self.sessions.pop(peer)
        self.log.forget(peer)
        self.log.line(
            f"{peer}: session ended ({why}): {session.chunks} chunks, {session.clipped} clipped goals"
        )

    def _load(self, data: bytes, expected: type) -> Any:
        if len(data) > self.max_bytes:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message over the {self.max_bytes} byte cap")
        return pickles.safe_loads(data, expected)

    def _declared_cameras(self, features: Any) -> list[str]:
        if not isinstance(features, dict):
            raise UserError(f"lerobot_features must be a dict, got {type(features).__name__}")
        state = features.get("observation.state")
        names = state.get("names") if isinstance(state, dict) else None
        if names is not None and list(names) != STATE_NAMES:
            raise UserError(f"observation.state names {names!r}; an SO100 state is {STATE_NAMES}")
        cameras = [str(k)[len(IMAGES) :] for k in features if str(k).startswith(IMAGES)]
        return self.policy.view_order(cameras)

    async def _upload(self, stream: Any) -> bytes:
        """One Observation stream's payload, within the size cap and --stream-timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stream_timeout_s
        pieces = stream.__aiter__()
        buffer = bytearray()
        while True:
            try:
                piece = await asyncio.wait_for(pieces.__anext__(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise Refusal(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"observation upload not finished within {self.stream_timeout_s:g} s (--stream-timeout)",
                ) from None
            except StopAsyncIteration:
                raise UserError("observation stream ended without TRANSFER_END") from None
            if piece.transfer_state == messages.BEGIN:
                buffer.clear()
            elif piece.transfer_state not in (messages.MIDDLE, messages.END):
                raise UserError(f"observation piece with unknown transfer state {piece.transfer_state}")
            buffer += piece.data
            if len(buffer) > self.max_bytes:
                raise Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"observation larger than the {self.max_bytes} byte cap (--max-message-mb)",
                )
            if piece.transfer_state == messages.END:
                return bytes(buffer)

    def _observed(self, timed: pickles.TimedObservation, session: Session) -> Observed:
        if not isinstance(timed.timestamp, Real) or not math.isfinite(timed.timestamp):
            raise UserError(f"observation timestamp must be a finite number, got {timed.timestamp!r}"[:200])
        if isinstance(timed.timestep, bool) or not isinstance(timed.timestep, Integral):
            raise UserError(f"observation timestep must be an integer, got {timed.timestep!r}"[:200])
        raw = timed.observation
        if not isinstance(raw, dict):
            raise UserError(f"observation must be LeRobot's robot dict, got {type(raw).__name__}")
        missing = [k for k in STATE_NAMES if k not in raw]
        if missing:
            raise UserError(f"observation has no {', '.join(missing)}")
        state = check_state([raw[k] for k in STATE_NAMES], "observation state")
        task = check_task(raw.get("task"), 'observation "task"')
        cameras = {k: v for k, v in raw.items() if k not in STATE_NAMES and k != "task"}
        images = self.policy.images(cameras, session.cameras)
        return Observed(float(timed.timestamp), int(timed.timestep), images, state, task)


def guarded(log: SessionLog, fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable:
    """Every failure reaches the client as a status with a plain message, never Python's exception text."""

    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except Refusal as refusal:
            await context.abort(refusal.code, str(refusal)[:MAX_DETAILS])
        except UserError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err)[:MAX_DETAILS])
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as err:  # a fault of this server: logged here, not sent
            log.line(f"{context.peer()}: {fn.__name__} failed: {type(err).__name__}: {err}")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error on the server (see its log)")

    return handler


def handlers(service: AsyncInference) -> grpc.GenericRpcHandler:
    def serialize(message: Any) -> bytes:
        return message.SerializeToString()

    def unary(fn: Callable, request: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            guarded(service.log, fn), request_deserializer=request.FromString, response_serializer=serialize
        )

    return grpc.method_handlers_generic_handler(
        messages.SERVICE,
        {
            "Ready": unary(service.ready, messages.Empty),
            "SendPolicyInstructions": unary(service.send_policy_instructions, messages.PolicySetup),
            "GetActions": unary(service.get_actions, messages.Empty),
            "SendObservations": grpc.stream_unary_rpc_method_handler(
                guarded(service.log, service.send_observations),
                request_deserializer=messages.Observation.FromString,
                response_serializer=serialize,
            ),
        },
    )


async def serve_lerobot(args: argparse.Namespace, policy: ServedPolicy, ready: Callable[[str], None]) -> str:
    """Serve until SIGINT/SIGTERM; returns the signal's name."""
    max_bytes = int(args.max_message_mb * 1024 * 1024)
    service = AsyncInference(policy, args.fps, max_bytes, args.stream_timeout)
    options = [("grpc.max_receive_message_length", min(max_bytes, messages.CHUNK_BYTES + 1024)),
               ("grpc.max_send_message_length", max_bytes)]  # fmt: skip
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers(service),))
    address = f"{args.host}:{args.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # newer grpcio raises where older ones return 0
        port = 0
    if port == 0:
        raise UserError(f"--port {args.port}: cannot listen on {address} (in use?); choose another port")
    await server.start()
    ready(f"LeRobot async inference on {args.host}:{port} (messages <= {max_bytes} bytes)")
    try:
        return await until_stopped()
    finally:
        await server.stop(grace=2)
