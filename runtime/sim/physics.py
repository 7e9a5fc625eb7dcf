"""The physics twin: the simulated bus's servos read and drive the joints of a MuJoCo SO101.

Each STS3215's register file stays the kinematic simulator's (`Servo`); only its motion differs. At
the physics rate the goal (through the homing offset and the position limits) becomes the position
actuator's setpoint, Torque_Limit its force range, and Torque_Enable = 0 removes the actuator's force,
so the joint falls under gravity. Present position and speed come from the joint; load (0.1% of the
stall torque, sign = direction) from the actuator force, current from the load as in the kinematic
model. ticks = 2048 + rad x 4096 / 2pi (after the homing offset). Only position mode (Operating_Mode 0)
is simulated.

Overload protection as the firmware does it: a load above Overload_Torque (%) for Protection_Time
(x 10 ms) latches the overload bit (0x20), and Unloading_Condition (0x20 set by default) drops torque.

The physics clock runs at `realtime_factor` x wall time and never runs ahead of it. After a stall of
the process (the arm kept moving meanwhile) the physics catches up, up to MAX_LAG_S of backlog; beyond
that the backlog is dropped and simulated time slips, so simulated time / wall time (the real-time
factor in the state) stays below 1 when the twin cannot keep up; `max_lag_ms` is the longest stall.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim.frames import SlotWriter
from rynn_edge.runtime.sim.servo import Servo

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
TICKS_PER_RAD = 4096 / (2 * math.pi)
CENTRE = 2048
MAX_LAG_S = 0.5
MOVING_SPEED = 20.0  # step/s: below this the moving flag is clear (holding against gravity is < 1 step)
CUBE_JITTER_M = 0.02  # --seed moves the cube by up to this much on the table
GL_LIBRARIES = (
    "headless rendering needs EGL: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri; "
    "or OSMesa: apt-get install libosmesa6 and set MUJOCO_GL=osmesa"
)


def import_mujoco():
    """mujoco, with the GL platform chosen before its import (EGL unless MUJOCO_GL says otherwise)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    try:
        import mujoco
    except ImportError as err:
        if err.name == "mujoco":
            raise UserError("the physics twin needs MuJoCo: pip install 'rynn-edge[physics]'") from None
        failure: Exception = err
    except (AttributeError, OSError) as err:  # PyOpenGL finds no library of the platform
        failure = err
    else:
        return mujoco
    platform = os.environ["MUJOCO_GL"]
    raise UserError(f"MuJoCo cannot load its GL platform {platform} ({failure}); {GL_LIBRARIES}")


def ticks(rad: float) -> float:
    return CENTRE + rad * TICKS_PER_RAD


def radians(ticks_: float) -> float:
    return (ticks_ - CENTRE) / TICKS_PER_RAD


class Twin:
    """One MuJoCo model and its state, advanced on the caller's monotonic clock."""

    def __init__(self, scene_xml: Path, now: float, *, realtime_factor: float = 1.0, seed: int = 0) -> None:
        mujoco = import_mujoco()
        self.mujoco = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(scene_xml))
        self.data = mujoco.MjData(self.model)
        self.realtime_factor = realtime_factor
        self.dt = float(self.model.opt.timestep)
        self.qpos = [int(self.model.joint(j).qposadr[0]) for j in JOINTS]
        self.qvel = [int(self.model.joint(j).dofadr[0]) for j in JOINTS]
        self.actuators = [int(self.model.actuator(j).id) for j in JOINTS]
        self.gain = self.model.actuator_gainprm[:, 0].copy()
        self.bias = self.model.actuator_biasprm[:, :3].copy()
        self.force_range = self.model.actuator_forcerange.copy()
        self.servos: dict[int, PhysicsServo] = {}
        self.pose: SlotWriter | None = None  # where the renderer reads the state (render.RenderProcess)
        rng = np.random.default_rng(seed)
        cube = self.model.joint("cube").qposadr[0]
        self.data.qpos[cube : cube + 2] += rng.uniform(-CUBE_JITTER_M, CUBE_JITTER_M, 2)
        self.start(now)

    def start(self, now: float) -> None:
        """(Re)anchor simulated time 0 at `now` (the moment the bus goes live)."""
        self.t0 = now - self.data.time / self.realtime_factor
        self.wall0, self.sim0 = now, self.data.time
        self.busy_s = self.max_lag_s = 0.0

    def set_joint(self, joint: int, ticks_: float) -> None:
        self.data.qpos[self.qpos[joint]] = radians(ticks_)
        self.mujoco.mj_forward(self.model, self.data)

    def joint_ticks(self, joint: int) -> tuple[float, float]:
        """(position in ticks, speed in ticks/s) of joint index `joint`."""
        return ticks(float(self.data.qpos[self.qpos[joint]])), float(
            self.data.qvel[self.qvel[joint]]
        ) * TICKS_PER_RAD

    def actuator_force(self, joint: int) -> float:
        """Actuator force as a fraction of the stall torque (-1..1)."""
        a = self.actuators[joint]
        return float(self.data.actuator_force[a] / self.force_range[a, 1])

    def _apply(self, servo: PhysicsServo, joint: int) -> None:
        a = self.actuators[joint]
        on = servo.torque_on
        self.model.actuator_gainprm[a, 0] = self.gain[a] if on else 0.0
        self.model.actuator_biasprm[a, :3] = self.bias[a] if on else 0.0
        self.model.actuator_forcerange[a] = self.force_range[a] * servo.get(ct.TORQUE_LIMIT) / 1000.0
        self.data.ctrl[a] = radians(servo.target() + servo.get(ct.HOMING_OFFSET))

    def advance(self, now: float) -> None:
        target = (now - self.t0) * self.realtime_factor
        behind = target - self.data.time
        self.max_lag_s = max(self.max_lag_s, behind / self.realtime_factor)
        if behind > MAX_LAG_S * self.realtime_factor:  # fell behind: drop the backlog, time slips
            self.t0 += (behind - self.dt) / self.realtime_factor
            behind = self.dt
        steps = int(behind / self.dt)
        if steps <= 0:
            return
        started = time.perf_counter()
        for joint, servo in self.servos.items():
            self._apply(servo, joint)
        for _ in range(steps):
            self.mujoco.mj_step(self.model, self.data)
        self.publish_pose()
        self.busy_s += time.perf_counter() - started

    def publish_pose(self) -> None:
        if self.pose is not None:
            self.pose.publish(self.data.qpos, self.data.time)

    def stats(self, now: float) -> dict[str, float]:
        wall = max(now - self.wall0, 1e-9)
        return {
            "sim_time_s": round(self.data.time, 4),
            "realtime_factor": round((self.data.time - self.sim0) / wall, 3),
            "physics_busy": round(self.busy_s / wall, 3),
            "max_lag_ms": round(self.max_lag_s * 1000, 1),
        }


class PhysicsServo(Servo):
    """A `Servo` whose motion is joint `joint` of `twin`."""

    def __init__(
        self, twin: Twin, joint: int, servo_id: int, position: float, now: float, baud_index: int
    ) -> None:
        self.twin, self.joint = twin, joint
        self.overloaded_s = 0.0
        self.sim_last = twin.data.time
        twin.set_joint(joint, position)  # homing offset 0 at power-on: the actual position
        twin.servos[joint] = self
        super().__init__(servo_id, position, now, baud_index)

    def _sync(self) -> None:
        actual, speed = self.twin.joint_ticks(self.joint)
        self.pos = actual - self.get(ct.HOMING_OFFSET)
        if self.single_turn:
            self.pos %= 4096
        self.vel, self.acc = speed, 0.0

    def _power_on(self) -> None:
        self._sync()
        super()._power_on()

    def advance(self, now: float) -> None:
        self.last = now
        self.twin.advance(now)
        self._sync()
        dt, self.sim_last = self.twin.data.time - self.sim_last, self.twin.data.time
        if dt > 0:
            self._heat(dt)
            self._protect(dt)

    def _protect(self, dt: float) -> None:
        if abs(self._load()) > self.regs[ct.OVERLOAD_TORQUE] * 10:
            self.overloaded_s += dt
        else:
            self.overloaded_s = 0.0
        if self.overloaded_s >= self.regs[ct.PROTECTION_TIME] * 0.01 and not self.latched & ct.ERR_OVERLOAD:
            self.latched |= ct.ERR_OVERLOAD
            self._enforce_protection()

    def _load(self) -> int:
        if not self.torque_on:
            return 0
        return max(-1000, min(1000, round(self.twin.actuator_force(self.joint) * 1000)))

    def moving(self) -> bool:
        return abs(self.vel) >= MOVING_SPEED
