"""One simulated STS3215: its register file and its motion, integrated on the caller's monotonic clock."""

from __future__ import annotations

import math

from rynn_edge.runtime.sim import control_table as ct

MAX_SPEED = 3000.0  # step/s, no-load speed of the 7.4 V STS3215 (~45 rpm); Goal_Velocity = 0 means this
MAX_ACCEL = 25_400.0  # step/s^2, Acceleration register 254 x 100; Acceleration = 0 means this
AMBIENT_C = 28.0
THERMAL_TAU_S = 120.0
MAX_SUBSTEP_S = 0.002


class Servo:
    """Register file + trapezoidal-velocity motion (bounded speed and acceleration) toward Goal_Position.

    `pos` is the present position in the homing-offset frame (Present = Actual - Homing_Offset);
    the physical (actual) position is `pos + offset` and stays put when the offset is rewritten.
    """

    def __init__(
        self, servo_id: int, position: float = 2048.0, now: float = 0.0, baud_index: int = 0
    ) -> None:
        self.eprom = ct.factory_table(servo_id)  # what survives a power cycle
        self.eprom[ct.BAUD_RATE] = baud_index
        self.regs = bytearray(self.eprom)
        self.pos = float(position)
        self.vel = 0.0
        self.acc = 0.0
        self.temperature = AMBIENT_C
        self.latched = 0  # error bits held until a power cycle
        self.pending: list[tuple[int, bytes]] = []
        self.last = now
        self._power_on()

    def with_model(self, model: int) -> Servo:
        """This servo reporting another Model_Number (fault injection: a wrong servo type on the bus)."""
        for table in (self.eprom, self.regs):
            table[ct.MODEL_NUMBER : ct.MODEL_NUMBER + 2] = model.to_bytes(2, "little")
        return self

    # -- register access ---------------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.regs[ct.ID]

    def get(self, address: int) -> int:
        raw = int.from_bytes(self.regs[address : address + ct.size_of(address)], "little")
        sign_bit = ct.SIGN_BIT.get(address)
        return raw if sign_bit is None else ct.decode_signed(raw, sign_bit)

    def _set(self, address: int, value: int) -> None:
        size = ct.size_of(address)
        sign_bit = ct.SIGN_BIT.get(address)
        raw = value if sign_bit is None else ct.encode_signed(value, sign_bit)
        self.regs[address : address + size] = (int(raw) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read(self, address: int, length: int, now: float) -> bytes:
        self.advance(now)
        self._refresh_feedback()
        return bytes(self.regs[address : address + length]).ljust(length, b"\0")

    def write(self, address: int, data: bytes, now: float) -> None:
        self.advance(now)
        old_offset = self.get(ct.HOMING_OFFSET)
        torque_before = self.regs[ct.TORQUE_ENABLE]
        unlocked = self.regs[ct.LOCK] == 0
        written = set()
        for i, byte in enumerate(data):
            a = address + i
            if a in ct.WRITABLE:
                self.regs[a] = byte
                written.add(a)
                if unlocked and a < ct.EPROM_END:
                    self.eprom[a] = byte
        if written & {ct.HOMING_OFFSET, ct.HOMING_OFFSET + 1}:
            self._move_frame(old_offset, self.get(ct.HOMING_OFFSET))
        if ct.TORQUE_ENABLE in written:
            if self.regs[ct.TORQUE_ENABLE] == ct.TORQUE_RECENTRE:  # a command, not a torque state
                self._recentre()
                self.regs[ct.TORQUE_ENABLE] = torque_before
            elif self.torque_on and torque_before != 1 and ct.GOAL_POSITION not in written:
                # No Feetech document or LeRobot issue we found says whether an STS3215 drives to its old
                # Goal_Position on torque enable (a goal now shifted by a rewritten Homing_Offset, or left
                # behind by hand moves); we take the safe reading and hold where it stands (README,
                # "The bus simulator").
                self._set(ct.GOAL_POSITION, round(self.pos))
            self._enforce_protection()

    def reg_write(self, address: int, data: bytes) -> None:
        self.pending.append((address, data))
        self.regs[ct.REG_WRITE_PENDING] = 1

    def action(self, now: float) -> None:
        pending, self.pending = self.pending, []
        self.regs[ct.REG_WRITE_PENDING] = 0
        for address, data in pending:
            self.write(address, data, now)

    def power_cycle(self, now: float) -> None:
        self.advance(now)
        self.regs = bytearray(self.eprom)
        self.latched = 0
        self.pending = []
        self._power_on()

    def factory_reset(self, now: float) -> None:
        """RESET (0x06): factory EPROM, but keep ID and baud so the bus stays reachable."""
        keep = self.eprom[ct.ID], self.eprom[ct.BAUD_RATE]
        self.eprom = ct.factory_table(keep[0])
        self.eprom[ct.BAUD_RATE] = keep[1]
        self.pos = self.pos + self.get(ct.HOMING_OFFSET)  # the new offset is 0: keep the physical position
        self.power_cycle(now)

    def inject(self, bits: int, now: float) -> None:
        """Latch protection error bits (fault injection), with the consequences the firmware draws."""
        self.advance(now)
        self.latched |= bits
        if bits & ct.ERR_OVERHEAT:
            self.temperature = max(self.temperature, self.regs[ct.MAX_TEMPERATURE_LIMIT] + 5.0)
        self._enforce_protection()
        self._refresh_feedback()

    @property
    def error(self) -> int:
        """ERR byte of every status packet (= Status register)."""
        return self.latched

    # -- state derived from registers ---------------------------------------------------------------

    @property
    def torque_on(self) -> bool:
        return self.regs[ct.TORQUE_ENABLE] == 1

    @property
    def single_turn(self) -> bool:
        multi = self.get(ct.MIN_POSITION_LIMIT) == 0 and self.get(ct.MAX_POSITION_LIMIT) == 0
        return not multi and not self.regs[ct.PHASE] & 0x10

    def target(self) -> float:
        goal = self.get(ct.GOAL_POSITION)
        if self.single_turn:
            goal = min(max(goal, self.get(ct.MIN_POSITION_LIMIT)), self.get(ct.MAX_POSITION_LIMIT))
        return float(goal)

    def _power_on(self) -> None:
        self.regs[ct.TORQUE_LIMIT : ct.TORQUE_LIMIT + 2] = self.regs[
            ct.MAX_TORQUE_LIMIT : ct.MAX_TORQUE_LIMIT + 2
        ]
        if self.single_turn:
            self.pos %= 4096
        self.vel = self.acc = 0.0
        self._set(ct.GOAL_POSITION, round(self.pos))  # the firmware holds where it woke up
        self._refresh_feedback()

    def _move_frame(self, old_offset: int, new_offset: int) -> None:
        self.pos += old_offset - new_offset
        if self.single_turn:
            self.pos %= 4096

    def _recentre(self) -> None:
        old = self.get(ct.HOMING_OFFSET)
        actual = round(self.pos) + old
        new = actual % 4096 - 2048  # so that Present reads 2048
        self._set(ct.HOMING_OFFSET, new)
        self.eprom[ct.HOMING_OFFSET : ct.HOMING_OFFSET + 2] = self.regs[
            ct.HOMING_OFFSET : ct.HOMING_OFFSET + 2
        ]
        self._move_frame(old, self.get(ct.HOMING_OFFSET))
        self._set(ct.GOAL_POSITION, round(self.pos))

    def _enforce_protection(self) -> None:
        if self.latched & self.regs[ct.UNLOADING_CONDITION]:
            self.regs[ct.TORQUE_ENABLE] = 0

    # -- dynamics ------------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        dt, self.last = now - self.last, now
        if dt <= 0:
            return
        self._heat(dt)
        if not self.torque_on:
            self.vel = self.acc = 0.0
            return
        mode = self.regs[ct.OPERATING_MODE]
        if mode not in (0, 1) or (mode == 0 and self.vel == 0.0 and self.pos == self.target()):
            self.acc = 0.0
            return
        steps = max(1, math.ceil(dt / MAX_SUBSTEP_S))
        for _ in range(steps):
            self._substep(dt / steps, mode)

    def _heat(self, dt: float) -> None:
        load = abs(self._load()) / 1000.0
        self.temperature += (AMBIENT_C + 40.0 * load - self.temperature) * min(1.0, dt / THERMAL_TAU_S)

    def _limits(self) -> tuple[float, float]:
        speed = abs(self.get(ct.GOAL_VELOCITY))
        accel = self.regs[ct.ACCELERATION] * 100.0
        return (min(speed, MAX_SPEED) if speed else MAX_SPEED), (
            min(accel, MAX_ACCEL) if accel else MAX_ACCEL
        )

    def _substep(self, h: float, mode: int) -> None:
        vmax, amax = self._limits()
        if mode == 1:  # constant-speed (wheel) mode
            v_des = math.copysign(min(abs(self.get(ct.GOAL_VELOCITY)), MAX_SPEED), self.get(ct.GOAL_VELOCITY))
            target = None
        else:
            target = self.target()
            err = target - self.pos
            v_des = math.copysign(min(vmax, math.sqrt(2.0 * amax * abs(err))), err)
        dv = min(max(v_des - self.vel, -amax * h), amax * h)
        self.acc = dv / h
        self.vel += dv
        new_pos = self.pos + self.vel * h
        if target is not None and (new_pos - target) * (self.pos - target) <= 0:
            new_pos, self.vel = target, 0.0  # arrived (or crossed): the position loop settles
        self.pos = new_pos
        if mode == 1 and self.single_turn:
            self.pos %= 4096

    # -- feedback registers --------------------------------------------------------------------------

    def _load(self) -> int:
        if not self.torque_on:
            return 0
        effort = 30.0 + 300.0 * abs(self.acc) / MAX_ACCEL + 150.0 * abs(self.vel) / MAX_SPEED
        direction = self.acc if self.acc else self.vel
        return int(math.copysign(min(effort, 1000.0), direction if direction else 1.0))

    def moving(self) -> bool:
        return self.vel != 0.0

    def present_position(self) -> int:
        position = round(self.pos)
        return position % 4096 if self.single_turn else position

    def _refresh_feedback(self) -> None:
        load = self._load()
        self._set(ct.PRESENT_POSITION, self.present_position())
        self._set(ct.PRESENT_VELOCITY, round(self.vel))
        self._set(ct.PRESENT_LOAD, load)
        self.regs[ct.PRESENT_VOLTAGE] = 74 - abs(load) // 250
        self.regs[ct.PRESENT_TEMPERATURE] = min(255, round(self.temperature))
        self.regs[ct.STATUS] = self.latched
        self.regs[ct.MOVING] = int(self.moving())
        self._set(ct.PRESENT_CURRENT, abs(load) // 2)

    def snapshot(self) -> dict[str, object]:
        self._refresh_feedback()
        return {
            "id": self.id,
            "present": self.present_position(),
            "goal": self.get(ct.GOAL_POSITION),
            "velocity": round(self.vel),
            "torque": self.regs[ct.TORQUE_ENABLE],
            "status": self.latched,
            "moving": self.moving(),
            "homing_offset": self.get(ct.HOMING_OFFSET),
            "load": self.get(ct.PRESENT_LOAD),
            "temperature": self.regs[ct.PRESENT_TEMPERATURE],
            "mode": self.regs[ct.OPERATING_MODE],
            "lock": self.regs[ct.LOCK],
        }
