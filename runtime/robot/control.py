"""`rynn-edge run`: cameras + policy + the C servo loop, with a safe stop on every exit path.

Threads: cameras (one each) and inference (the policy's worker) run beside this supervisor; the
servo loop runs in C on its own thread with absolute deadlines. The supervisor ticks at ~200 Hz:
it checks faults, logs loop records, feeds observations to the policy and chunks to the loop.

Whatever ends the run (duration reached, Ctrl-C, SIGTERM, a Python exception, a silent servo, an
error bit, a lost camera, a stalled or failed inference), `_safe_stop` runs: hold the pose (or go
to the rest pose) while the bus is healthy, stop the loop, then torque off every servo that answers.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.kernels import feetech
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import JointMap, load_calibration
from rynn_edge.runtime.robot.cameras import Camera
from rynn_edge.runtime.robot.chunking import (
    SUBMIT_MARGIN_CYCLES,
    SUPERVISOR_TICK_S,
    ChunkScheduler,
    switch_overhead_s,
)
from rynn_edge.runtime.robot.episode_log import EpisodeLog
from rynn_edge.runtime.robot.episode_metrics import EpisodeTrace, episode_metrics
from rynn_edge.runtime.robot.policy import Observation, open_policy
from rynn_edge.runtime.robot.report import ExitReason, RunStats, percentiles, print_status, summary

REST_CHUNK_ID = -2  # chunk id of the move to the rest pose in the episode log
REST_TOLERANCE_TICKS = 3
BUS_RECORD_INTERVAL_NS = 500_000_000  # how often the episode log gets the bus error counters
TORQUE_CONFIRM_ATTEMPTS = 4


@dataclass
class RunConfig:
    model: str
    port: str
    calibration: str
    cameras: list[tuple[str, str]]
    instruction: str
    tokenizer: str | None = None
    vq: str | None = None
    backend: str = "torch"
    stats: str | None = None
    baud: int = 1_000_000
    chunk_policy: str = "full"
    async_remaining: int | None = None  # async: fixed K rows left at a query; None: from the latency
    extra_latency_s: float = 0.0  # added to every inference (rehearse a slower model)
    rate_hz: float = 30.0
    loop_rate_hz: float = 100.0
    duration_s: float | None = None
    episode_log: str | None = None
    log_frames: bool = False
    max_speed_deg_s: float = 180.0
    bus_timeout_ms: float = 5.0
    bus_retries: int = 2
    max_missed_cycles: int = 10
    inference_deadline_s: float = 3.0
    camera_timeout_s: float = 0.5
    rest_pose: list[float] | None = None
    rest_s: float = 2.0
    hold_s: float = 0.3
    port_wait_s: float = 0.0
    server: str | None = None  # --backend triton: the server's HOST:PORT
    server_timeout_s: float = 30.0
    status_line: bool = True
    bus_label: str = "bus"  # what the status line calls the bus (the demo: its simulator)


@dataclass
class Outcome:
    reason: ExitReason
    message: str
    summary: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    def __init__(self, reason: ExitReason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Supervisor:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.stack = ExitStack()
        self.log: EpisodeLog | None = None
        self.cameras: list[Camera] = []
        self.policy = None
        self.sched: ChunkScheduler | None = None
        self.bus = None
        self.loop = None
        self.joints: JointMap | None = None
        self.signal_reason: ExitReason | None = None
        self.measured = RunStats()
        self.trace = EpisodeTrace()  # the records, for the seam and starvation metrics of the summary
        self.missed: dict[int, int] = {}
        self.last_present: np.ndarray | None = None
        self.last_t_ns = 0
        self.torque_report: dict[str, list[int]] = {}
        self.stopping = False  # in the safe stop: failures are recorded, never raised
        self.log_error: str | None = None

    # -- signals -----------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal_reason = ExitReason.INTERRUPTED if signum == signal.SIGINT else ExitReason.TERMINATED

    def _check_signal(self) -> None:
        if self.signal_reason is not None:
            how = "Ctrl-C" if self.signal_reason is ExitReason.INTERRUPTED else "SIGTERM"
            raise _Stop(self.signal_reason, f"stopped by {how}")

    def _install_signals(self) -> None:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.stack.callback(lambda: [signal.signal(s, h) for s, h in previous.items()])

    # -- setup -------------------------------------------------------------------------------------

    def _open(self) -> None:

        cfg = self.cfg
        calib = load_calibration(cfg.calibration, list(so100.MOTORS))
        self.joints = JointMap(calib, so100.NORM_MODES)
        if cfg.episode_log:
            self.log = EpisodeLog(cfg.episode_log)
            self.stack.callback(self._close_log)
        for name, source in cfg.cameras:
            cam = Camera(name, source, fps=cfg.rate_hz)
            self.stack.callback(cam.close)
            self.cameras.append(cam)
        for cam in self.cameras:
            cam.wait_first(5.0)
        # The model loads before the arm is touched: a bad model never leaves servos powered.
        self.policy = open_policy(
            cfg.model,
            instruction=cfg.instruction,
            tokenizer=cfg.tokenizer,
            vq=cfg.vq,
            backend=cfg.backend,
            stats=cfg.stats,
            robot="so100",
            extra_latency_s=cfg.extra_latency_s,
            server=cfg.server,
            server_timeout=cfg.server_timeout_s,
        )
        self.stack.callback(self.policy.close)
        self._check_signal()
        horizon = self.policy.time_horizon
        if cfg.chunk_policy == "async" and cfg.async_remaining is not None and cfg.async_remaining >= horizon:
            raise UserError(
                f"--async-remaining {cfg.async_remaining} must be smaller than the model's chunk length "
                f"{horizon} (valid: 1..{horizon - 1})"
            )
        if len(cfg.cameras) not in self.policy.image_counts:
            want = " or ".join(map(str, self.policy.image_counts))
            raise UserError(f"the model takes {want} camera views; got {len(cfg.cameras)} --camera")
        self.measured.warm_up_s = self.policy.warm_up([cam.latest().image for cam in self.cameras])
        try:
            self.sched = ChunkScheduler(
                cfg.chunk_policy,
                cfg.rate_hz,
                self.policy.time_horizon,
                remaining=cfg.async_remaining,
                overhead_s=switch_overhead_s(cfg.loop_rate_hz),
                latency_hint_s=self.measured.warm_up_s,
            )
        except ValueError as err:
            raise UserError(f"--chunk-policy async: {err}") from None
        self._check_signal()
        self._wait_for_port()
        try:
            self.bus = feetech.Bus(cfg.port, cfg.baud, cfg.bus_timeout_ms, cfg.bus_retries)
        except OSError as err:
            raise UserError(f"cannot open the servo bus: {err}") from None
        self.stack.callback(self.bus.close)
        arm = so100.Arm(self.bus)
        rewritten = so100.setup(arm, calib)
        lower, upper = self.joints.raw_limits()
        step = math.ceil(cfg.max_speed_deg_s * (so100.RESOLUTION - 1) / 360 / cfg.loop_rate_hz)
        self.loop = feetech.ControlLoop(
            self.bus,
            self.joints.ids,
            cfg.loop_rate_hz,
            cfg.rate_hz,
            lower.tolist(),
            upper.tolist(),
            [step] * len(self.joints.ids),
            max_missed_cycles=cfg.max_missed_cycles,
            fault_mask=so100.FAULT_BITS,
        )
        self._write(
            "start",
            config=self._config_record(),
            calibration={name: asdict(cal) for name, cal in calib.items()},  # readers rebuild step units
            calibration_rewritten=rewritten,
            max_step=step,
        )
        self.loop.start()

    def _wait_for_port(self) -> None:
        port = Path(self.cfg.port)
        deadline = time.monotonic() + self.cfg.port_wait_s
        if not port.exists() and self.cfg.port_wait_s > 0:
            print(f"rynn-edge run: model ready; waiting for {port}", file=sys.stderr, flush=True)
        while not port.exists() and time.monotonic() < deadline:
            self._check_signal()
            time.sleep(0.05)

    def _config_record(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": cfg.model,
            "port": cfg.port,
            "cameras": cfg.cameras,
            "instruction": cfg.instruction,
            "chunk_policy": cfg.chunk_policy,
            "async_remaining": cfg.async_remaining,
            "extra_latency_s": cfg.extra_latency_s,
            "rate_hz": cfg.rate_hz,
            "loop_rate_hz": cfg.loop_rate_hz,
            "time_horizon": self.policy.time_horizon,
            "motors": list(so100.MOTORS),
            "norm_modes": [m.value for m in so100.NORM_MODES.values()],
        }

    def _write(self, kind: str, **fields: Any) -> None:
        """One record: to the trace the summary is made from, and the same values to the episode log."""
        record = {"t_ns": time.monotonic_ns(), **fields}
        self.trace.add(kind, record)
        if self.log is None:
            return
        try:
            self.log.write(kind, **record)
        except OSError as err:
            # Stop logging at the first failure: every line written so far stays complete and readable.
            self._log_failed(err)
            if not self.stopping:
                raise _Stop(ExitReason.LOG_FAILED, self.log_error) from err

    def _log_failed(self, err: OSError) -> None:
        self.log_error = f"episode log {self.cfg.episode_log}: {err.strerror or err}"
        log, self.log = self.log, None
        with contextlib.suppress(OSError):
            log.close()

    def _close_log(self) -> None:
        if self.log is not None:
            try:
                self.log.close()
            except OSError as err:
                self._log_failed(err)

    # -- the supervision loop ------------------------------------------------------------------------

    def _drain(self) -> None:
        assert self.joints is not None
        records = feetech.records_to_numpy(self.loop)
        for rec in records:
            self.measured.add_cycle(int(rec["deadline_ns"]), int(rec["period_error_ns"]))
            valid = (rec["flags"] & feetech.RECORD_VALID) != 0
            if valid.all():
                self.last_present, self.last_t_ns = rec["present"].copy(), int(rec["bus_done_ns"])
            self._write(
                "step",
                cycle=rec["cycle"],
                deadline_ns=rec["deadline_ns"],
                period_error_ns=rec["period_error_ns"],
                read_ns=rec["bus_done_ns"],
                chunk_id=rec["chunk_id"],
                held=bool(rec["flags"][0] & feetech.RECORD_HELD),
                valid=valid,
                servo_error=rec["error"],
                present_raw=rec["present"],
                goal_raw=rec["goal"],
                state=self.joints.to_units(rec["present"]),
                goal=self.joints.to_units(rec["goal"]),
            )

    def _check_loop(self) -> None:
        st = self.loop.status()
        reason = st["fault_reason"]
        if not reason:
            return
        servo = st["fault_id"]
        if servo is None:
            raise _Stop(ExitReason.BUS_ERROR, reason)
        name = f"{so100.MOTOR_NAMES.get(servo, 'servo')} (id {servo})"
        k = self.loop.ids.index(servo)
        if st["valid"][k] and st["errors"][k] > 0:
            raise _Stop(ExitReason.SERVO_ERROR, f"{name}: {reason}")
        raise _Stop(ExitReason.SERVO_LOST, f"{name} stopped answering: {reason}")

    def _check_cameras(self, now_ns: int) -> None:
        for cam in self.cameras:
            frame = cam.latest()
            age = (now_ns - frame.t_ns) / 1e9
            if cam.error or age > self.cfg.camera_timeout_s:
                why = cam.error or "no new frame"
                raise _Stop(
                    ExitReason.CAMERA_LOST,
                    f"camera {cam.name} ({cam.source}): {why}; last frame {age:.2f} s old",
                )

    def _supervise(self) -> None:

        cfg = self.cfg
        assert self.joints is not None
        sched = self.sched
        tick_ns = round(SUPERVISOR_TICK_S * 1e9)
        submit_margin_ns = SUBMIT_MARGIN_CYCLES * round(1e9 / cfg.loop_rate_hz)
        t_start_ns = self.measured.t_start_ns = time.monotonic_ns()
        end_ns = t_start_ns + int(cfg.duration_s * 1e9) if cfg.duration_s else None
        query_since = 0
        next_status = t_start_ns + 500_000_000
        next_bus = t_start_ns + BUS_RECORD_INTERVAL_NS
        while True:
            now = time.monotonic_ns()
            self._check_signal()
            self._check_loop()
            self._drain()
            if end_ns is not None and now >= end_ns:
                raise _Stop(ExitReason.COMPLETED, f"ran for {cfg.duration_s:g} s")
            self._check_cameras(now)
            try:
                result = self.policy.result(timeout=0)
            except RuntimeError as err:
                raise _Stop(ExitReason.INFERENCE_FAILED, str(err)) from err
            if result is not None:
                switch_ns = time.monotonic_ns() + submit_margin_ns
                plan = sched.plan(result.goals, result.t_obs_ns, switch_ns, result.chunk_id)
                rows = np.stack([self.joints.to_raw(row) for row in plan.goals])
                self.loop.submit_chunk(plan.t0_ns, rows, plan.chunk_id)
                self.measured.add_chunk(result.latency_s)
                sched.observe_latency(result.latency_s)
                self._write(
                    "chunk",
                    chunk_id=plan.chunk_id,
                    t_obs_ns=result.t_obs_ns,
                    t0_ns=plan.t0_ns,
                    switch_ns=switch_ns,
                    latency_s=result.latency_s,
                    actions=result.actions,
                    goals=result.goals,
                    plan=plan.goals,
                    plan_raw=rows,
                )
            elif sched.in_flight and now - query_since > cfg.inference_deadline_s * 1e9:
                raise _Stop(
                    ExitReason.INFERENCE_STALLED,
                    f"no action chunk {(now - query_since) / 1e9:.2f} s after the query "
                    f"(deadline {cfg.inference_deadline_s:g} s)",
                )
            if sched.should_query(now) and self.last_present is not None:
                obs = Observation(
                    images=[cam.latest().image for cam in self.cameras],
                    state=self.joints.to_units(self.last_present),
                    t_ns=self.last_t_ns,
                )
                budget_s, remaining = sched.budget_s(now), sched.remaining
                chunk_id = self.policy.submit(obs)
                sched.start_query()
                query_since = now
                frames = None
                if cfg.log_frames and self.log is not None:
                    images = dict(zip((cam.name for cam in self.cameras), obs.images, strict=True))
                    frames = self.log.save_frames(f"chunk{chunk_id:06d}", images)
                self._write(
                    "query",
                    chunk_id=chunk_id,
                    t_obs_ns=obs.t_ns,
                    state=obs.state,
                    frames=frames,
                    budget_s=budget_s,
                    remaining=remaining,
                )
            if now >= next_bus:
                self._write_bus()
                next_bus = now + BUS_RECORD_INTERVAL_NS
            if cfg.status_line and now >= next_status:
                print_status(self.measured.status_line(now, self._bus_stats(), cfg.bus_label))
                next_status = now + 500_000_000
            time.sleep(max(0.0, (now + tick_ns - time.monotonic_ns()) / 1e9))

    # -- safe stop -----------------------------------------------------------------------------------

    def _safe_stop(self) -> list[str]:
        """Hold or go to rest while the loop still runs, stop it, torque off what still answers, then
        log the last loop records. Each step runs whatever the one before did (say, the rest move
        raised); the failures are returned, never raised."""
        self.stopping = True
        problems = []
        for step in (self._hold_or_rest, self._stop_loop, self._torque_off_all, self._drain_rest):
            try:
                step()
            except Exception as err:
                problems.append(f"{step.__name__.strip('_')} failed: {type(err).__name__}: {err}")
        return problems

    def _hold_or_rest(self) -> None:
        if self.loop is not None and self.loop.running:
            if self.cfg.rest_pose is not None:
                self._go_to_rest()
            else:
                self.loop.hold()
                time.sleep(self.cfg.hold_s)

    def _stop_loop(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    def _torque_off_all(self) -> None:
        self.torque_report = self._torque_off()

    def _drain_rest(self) -> None:
        if self.loop is not None:
            self._drain()

    def _go_to_rest(self) -> None:
        """A straight line to the rest pose over rest_s; returns once the servos are there (or 1 s late)."""
        assert self.joints is not None
        cfg = self.cfg
        start = self.joints.to_units(self.loop.status()["goal"])
        rows = max(2, int(cfg.rest_s * cfg.rate_hz))
        path = start + np.linspace(0.0, 1.0, rows)[:, None] * (np.asarray(cfg.rest_pose) - start)
        raw = np.stack([self.joints.to_raw(r) for r in path])
        self.loop.submit_chunk(time.monotonic_ns(), raw, REST_CHUNK_ID)
        deadline = time.monotonic() + cfg.rest_s + 1.0
        while time.monotonic() < deadline:
            st = self.loop.status()
            if not st["running"] or np.abs(np.asarray(st["present"]) - raw[-1]).max() <= REST_TOLERANCE_TICKS:
                break
            time.sleep(0.02)

    def _torque_off(self) -> dict[str, list[int]]:
        """Broadcast torque off, then confirm servo by servo: the report names who did not answer."""
        ids = list(so100.MOTORS.values())
        with contextlib.suppress(OSError):  # the port itself is gone: the confirmation below says so
            self.bus.torque_off(ids)
        off, on, silent = [], [], []
        for sid in ids:
            data = self._read_torque(sid)
            if data is None:
                silent.append(sid)
                continue
            if data[0]:
                # The broadcast was lost on this one: ask it directly (it answered a moment ago).
                try:
                    self.bus.write(sid, so100.TORQUE_ENABLE[0], b"\x00")
                except OSError:
                    on.append(sid)
                    continue
            off.append(sid)
        return {"torque_off": off, "torque_still_on": on, "no_answer": silent}

    def _read_torque(self, sid: int) -> bytes | None:
        """Torque_Enable of one servo, asked a few times: a busy host or a noisy bus must not make a
        servo that is still there look lost (each read already retries at the bus level)."""
        for _ in range(TORQUE_CONFIRM_ATTEMPTS):
            try:
                return self.bus.read(sid, *so100.TORQUE_ENABLE)[0]
            except OSError:
                time.sleep(0.01)
        return None

    # -- reporting -----------------------------------------------------------------------------------

    def _bus_stats(self) -> dict[int, dict[str, int]]:
        return {} if self.bus is None else self.bus.stats()["per_id"]

    def _write_bus(self) -> None:
        """The bus error counters so far, summed over the servos (the plot draws them over time)."""
        per_id = self._bus_stats().values()
        self._write("bus", **{key: sum(st[key] for st in per_id) for key in ("timeouts", "checksum_errors")})

    def _per_servo(self, key: str) -> dict[str, int]:
        if self.loop is None:
            return {}
        return dict(zip(so100.MOTOR_NAMES.values(), self.loop.status()[key], strict=True))

    def summary(self, outcome: Outcome) -> dict[str, Any]:
        result = summary(
            outcome.reason.label,
            outcome.reason.code,
            outcome.message,
            self.measured,
            self.cfg.loop_rate_hz,
            missed_cycles=self._per_servo("missed_total"),
            servo_error_replies=self._per_servo("error_count"),
            bus={so100.MOTOR_NAMES.get(int(sid), str(sid)): st for sid, st in self._bus_stats().items()},
            torque_report=self.torque_report,
            episode_log=self.cfg.episode_log,
            metrics=episode_metrics(self.trace),
        )
        rendered = {cam.name: percentiles(cam.render_s, 1e3) for cam in self.cameras if cam.render_s}
        if rendered:  # cameras of the physics twin: its render time of each frame the run read
            result["twin_render_ms"] = rendered
        return result

    # -- entry point ---------------------------------------------------------------------------------

    def run(self) -> Outcome:
        outcome: Outcome | None = None
        with self.stack:
            self._install_signals()
            try:
                self._open()
                self._supervise()
            except _Stop as stop:
                outcome = Outcome(stop.reason, stop.message)
            except so100.ServoFaultError as err:  # an error bit during setup: the bus is open
                outcome = Outcome(ExitReason.SERVO_ERROR, str(err))
            except KeyboardInterrupt:
                outcome = Outcome(ExitReason.INTERRUPTED, "stopped by Ctrl-C")
            except OSError as err:  # the bus (port gone, a servo silent during setup), not our code
                if self.bus is None:
                    raise
                outcome = Outcome(ExitReason.BUS_ERROR, f"{type(err).__name__}: {err}")
            except Exception as err:
                if self.bus is None or isinstance(err, UserError):
                    raise  # nothing was powered yet, or bad input: the CLI reports it (exit 2)
                outcome = Outcome(ExitReason.INTERNAL_ERROR, f"{type(err).__name__}: {err}")
            finally:
                problems = self._safe_stop() if self.bus is not None else []
            if self.bus is not None:
                self._write_bus()
            outcome = self._with_problems(outcome, problems)
            outcome.summary = self.summary(outcome)
            self._write("end", **outcome.summary)
        # Closing the log (the stack above) flushes its tail, which can fail too.
        return self._with_problems(outcome, [])

    def _with_problems(self, outcome: Outcome, problems: list[str]) -> Outcome:
        """A run that ended well but whose safe stop or episode log failed is not `completed`; a fault
        keeps its own code, and the message lists what else went wrong."""
        log = [self.log_error] if self.log_error and self.log_error not in outcome.message else []
        if not problems and not log:
            return outcome
        reason = outcome.reason
        if reason is ExitReason.COMPLETED:
            reason = ExitReason.INTERNAL_ERROR if problems else ExitReason.LOG_FAILED
        message = "; ".join([outcome.message, *problems, *log])
        summary = {
            **outcome.summary,
            "exit_reason": reason.label,
            "exit_code": reason.code,
            "message": message,
        }
        return Outcome(reason, message, summary if outcome.summary else {})


def run(cfg: RunConfig) -> Outcome:
    return Supervisor(cfg).run()
