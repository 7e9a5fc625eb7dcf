"""The policy the control loop talks to: `submit(observation)` returns at once, `result()` collects.

Inference runs on one worker thread (torch and onnxruntime release the GIL inside their kernels),
so the control side overlaps executing one chunk with computing the next. One observation can be
pending; a newer submit replaces an older one that has not started.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.predictor import Predictor, open_predictor


class NonFiniteActions(ValueError):
    """The model returned NaN or infinite actions: never sent to the servos."""


@dataclass(frozen=True)
class Observation:
    images: list[np.ndarray]  # HxWx3 uint8 RGB, in prompt order
    state: np.ndarray  # training units (SO100: degrees, gripper 0-100)
    t_ns: int  # monotonic time the state was read


@dataclass(frozen=True)
class ChunkResult:
    chunk_id: int
    actions: np.ndarray  # [T, A] de-normalised, training units
    goals: np.ndarray  # [T, A] absolute joint goals (SO100: state + offsets, gripper absolute)
    t_obs_ns: int
    latency_s: float


class Policy:
    def __init__(
        self, predictor: Predictor, instruction: str, mode: str = "continuous", extra_latency_s: float = 0.0
    ):
        self.predictor = predictor
        self.extra_latency_s = extra_latency_s  # added to every query: rehearse a slower model
        self.instruction = instruction
        self.mode = mode
        self.time_horizon = predictor.backend.time_horizon
        self.action_dim = predictor.backend.action_dim
        self.image_size = predictor.image_size
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._pending: tuple[int, Observation] | None = None
        self._done: list[ChunkResult] = []
        self._error: BaseException | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="rynn-edge-policy", daemon=True)
        self._worker.start()

    def submit(self, observation: Observation) -> int:
        """Queue an observation for inference; returns the chunk id its result will carry."""
        chunk_id = next(self._ids)
        with self._cond:
            self._raise_if_failed()
            self._pending = (chunk_id, observation)
            self._cond.notify_all()
        return chunk_id

    def result(self, timeout: float | None = 0.0) -> ChunkResult | None:
        """The newest finished chunk (older unread ones are dropped), or None after `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._done or self._error is not None, timeout=timeout)
            self._raise_if_failed()
            if not self._done:
                return None
            newest, self._done = self._done[-1], []
            return newest

    @property
    def image_counts(self) -> tuple[int, ...]:
        """How many camera views a query takes (in prompt order)."""
        return self.predictor.embodiment.image_counts

    def warm_up(self, images: list[np.ndarray]) -> float:
        """One blocking query on the caller's thread at a mid-range state, result discarded, so that the
        first real query does not pay for graph capture, allocation or lazy initialisation inside its
        deadline (and a model that cannot run fails before the arm is touched). Returns its seconds."""
        state = self.predictor.stats.state
        mid = (np.asarray(state.min, dtype=np.float64) + np.asarray(state.max, dtype=np.float64)) / 2
        try:
            return self._infer(0, Observation(images, mid, 0)).latency_s
        except NonFiniteActions as err:
            raise UserError(f"the model's warm-up query failed before the arm was touched: {err}") from None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=5.0)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"inference failed: {self._error}") from self._error

    def _infer(self, chunk_id: int, observation: Observation) -> ChunkResult:
        start = time.perf_counter()
        out = self.predictor.predict(observation.images, observation.state, self.instruction, self.mode)
        goals = out.actions if out.goals is None else out.goals
        if not (np.isfinite(out.actions).all() and np.isfinite(goals).all()):
            raise NonFiniteActions(
                f"chunk {chunk_id}: the model returned non-finite actions (NaN/inf); check weights and stats"
            )
        if self.extra_latency_s > 0:
            time.sleep(self.extra_latency_s)
        return ChunkResult(chunk_id, out.actions, goals, observation.t_ns, time.perf_counter() - start)

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                chunk_id, observation = self._pending
                self._pending = None
            try:
                done = self._infer(chunk_id, observation)
            except BaseException as err:  # surfaced to the control thread by result()/submit()
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._done.append(done)
                self._cond.notify_all()


def open_policy(
    model: str | Path, *, instruction: str, mode: str = "continuous", extra_latency_s: float = 0.0, **options
) -> Policy:
    """A policy over a checkpoint or artifact folder; `options` as for `predictor.open_predictor`."""
    return Policy(open_predictor(model, **options), instruction, mode, extra_latency_s)
