"""`rynn-edge serve ARTIFACTS --openpi`: openpi's websocket policy protocol over a rynn-edge predictor.

A connection is a session. The server sends its metadata first, then answers every observation frame
with one chunk. An observation (a msgpack map):

    {"images": {"front": uint8 [H, W, 3], "wrist": uint8 [H, W, 3]},   # views by name (--camera-map)
     "state": float [6],     # shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper
     "prompt": str}          # the instruction

State and actions are in LeRobot's SO100 units (joints in degrees, gripper 0-100). The reply is
`{"actions": float32 [T, 6] absolute joint goals (inside the valid ranges), "clipped": int,
"server_timing": {"infer_ms": float}}`. A frame that cannot be served is answered with a text frame
naming the problem (openpi's client raises it) and the connection stays open. Inference runs on the
policy's worker thread, never on the event loop.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from itertools import count
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.serving.openpi import frames
from rynn_edge.runtime.serving.policy import (
    POLICY_TYPE,
    ServedPolicy,
    SessionLog,
    check_state,
    check_task,
    until_stopped,
)

KEYS = ("images", "state", "prompt")


def metadata(policy: ServedPolicy) -> dict[str, Any]:
    return {
        "policy": POLICY_TYPE,
        "artifact": policy.artifact.name,
        "robot": policy.predictor.robot,
        "views": list(policy.views),
        "camera_map": policy.camera_map,
        "state_names": list(so100.MOTORS),
        "action_horizon": policy.horizon,
        "units": "LeRobot SO100: joints in degrees, gripper 0-100; actions are absolute goals",
        "goal_lower": policy.limits.lower.tolist(),
        "goal_upper": policy.limits.upper.tolist(),
    }


def inputs(policy: ServedPolicy, observation: Any) -> tuple[list[np.ndarray], np.ndarray, str]:
    if not isinstance(observation, dict):
        raise UserError(
            f"observation must be a map with keys {', '.join(KEYS)}, got {type(observation).__name__}"
        )
    unknown = sorted(map(str, set(observation) - set(KEYS)))
    missing = [k for k in KEYS if k not in observation]
    if unknown or missing:
        raise UserError(
            f"observation keys: missing {', '.join(missing) or 'none'}, unknown "
            f"{', '.join(unknown) or 'none'}; expected {', '.join(KEYS)}"
        )
    cameras = observation["images"]
    if not isinstance(cameras, dict) or not all(isinstance(k, str) for k in cameras):
        raise UserError('observation "images" must map camera names to HxWx3 uint8 arrays')
    images = policy.images(cameras, policy.view_order(list(cameras)))
    state = observation["state"]
    if not isinstance(state, (list, tuple, np.ndarray)) or np.ndim(state) != 1:
        raise UserError(f'observation "state" must be a list of {len(so100.MOTORS)} numbers')
    return (
        images,
        check_state(list(state), 'observation "state"'),
        check_task(observation["prompt"], '"prompt"'),
    )


async def serve_openpi(args: argparse.Namespace, policy: ServedPolicy, ready: Callable[[str], None]) -> str:
    """Serve until SIGINT/SIGTERM; returns the signal's name."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    log = SessionLog("rynn-edge serve --openpi")
    max_bytes = int(args.max_message_mb * 1024 * 1024)
    hello = frames.pack(metadata(policy))
    numbers = count(1)

    async def session(connection: ServerConnection) -> None:
        name = f"session {next(numbers)} ({connection.remote_address[0]}:{connection.remote_address[1]})"
        chunks = clipped = 0
        log.line(f"{name}: connected")
        try:
            await connection.send(hello)
            async for frame in connection:
                try:
                    images, state, task = inputs(policy, frames.unpack(frame))
                    chunk = await policy.run(images, state, task)
                except UserError as err:
                    log.limited(name, "observation", f"refused: {err}")
                    await connection.send(f"{log.prefix}: {err}")
                    continue
                except Exception as err:  # a fault of this server: logged here, not sent
                    log.line(f"{name}: inference failed: {type(err).__name__}: {err}")
                    await connection.send(f"{log.prefix}: internal error on the server (see its log)")
                    continue
                chunks, clipped = chunks + 1, clipped + chunk.clipped
                if chunk.clipped:
                    log.limited(
                        name, "clipped", f"{chunk.clipped} goal value(s) moved into range ({clipped} so far)"
                    )
                reply = {
                    "actions": chunk.goals.astype(np.float32),
                    "clipped": chunk.clipped,
                    "server_timing": {"infer_ms": chunk.infer_s * 1e3},
                }
                await connection.send(frames.pack(reply))
        except ConnectionClosed:
            pass
        finally:
            log.forget(name)
            log.line(f"{name}: closed: {chunks} chunks, {clipped} clipped goal values")

    try:
        server = await serve(
            session,
            args.host,
            args.port,
            max_size=max_bytes,
            compression=None,
            open_timeout=args.stream_timeout,
            max_queue=4,
        )
    except OSError as err:
        raise UserError(
            f"--port {args.port}: cannot listen on {args.host}:{args.port} ({err.strerror or err}); "
            "choose another port"
        ) from None
    port = server.sockets[0].getsockname()[1]
    ready(f"openpi websocket policy on ws://{args.host}:{port} (frames <= {max_bytes} bytes)")
    try:
        return await until_stopped()
    finally:
        server.close()
        await server.wait_closed()
