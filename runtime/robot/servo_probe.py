"""`rynn-edge doctor`'s rows about the servo bus: the serial port (exists, access, dialout, udev rule), each
of the six servos (model, firmware, voltage, temperature, torque, limits against the calibration file),
and `--scan` for ports where Feetech servos answer (LeRobot's find-port)."""

from __future__ import annotations

import contextlib
import glob
import grp
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rynn_edge.kernels import feetech
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import MotorCalibration
from rynn_edge.runtime.robot.health import FAIL, OK, SKIP, WARN, Row, user_name

SERIAL_GLOBS = ("/dev/ttyACM*", "/dev/ttyUSB*", "/dev/serial/by-id/*")
SERIAL_GROUPS = ("dialout", "uucp")
UDEV_RULES = "/etc/udev/rules.d"
UDEV_RULE_FILE = "99-so100.rules"
BUS_TIMEOUT_MS = 20.0  # generous: a probe, not the control loop
# Registers read for the table (address, size), beyond those so100 names.
MAX_TEMPERATURE_LIMIT = (13, 1)
MAX_VOLTAGE_LIMIT = (14, 1)
MIN_VOLTAGE_LIMIT = (15, 1)
PRESENT_VOLTAGE = (62, 1)  # 0.1 V
PRESENT_TEMPERATURE = (63, 1)  # deg C


@dataclass(frozen=True)
class PortFacts:
    """What the doctor needs to know of a port path; `can_access` is injectable (tests run as root)."""

    path: str
    exists: bool
    readable_writable: bool
    group: str
    user_groups: tuple[str, ...]
    usb: dict[str, str]  # idVendor, idProduct, serial of the USB adapter (empty for a pty)


def _usb_attributes(path: str) -> dict[str, str]:
    tty = Path("/sys/class/tty") / Path(os.path.realpath(path)).name
    device = tty / "device"
    if not device.exists():
        return {}
    folder = device.resolve()
    while folder != folder.parent:
        if (folder / "idVendor").is_file():
            return {
                key: (folder / key).read_text().strip()
                for key in ("idVendor", "idProduct", "serial")
                if (folder / key).is_file()
            }
        folder = folder.parent
    return {}


def port_facts(path: str, can_access: Callable[[str], bool] | None = None) -> PortFacts:
    access = can_access or (lambda p: os.access(p, os.R_OK | os.W_OK))
    exists = os.path.exists(path)
    group = ""
    if exists:
        gid = os.stat(path).st_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    user_groups = tuple(sorted({grp.getgrgid(g).gr_name for g in os.getgroups() if _known_gid(g)}))
    return PortFacts(path, exists, exists and access(path), group, user_groups, _usb_attributes(path))


def _known_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def udev_rule(usb: dict[str, str]) -> str:
    serial = f', ATTRS{{serial}}=="{usb["serial"]}"' if usb.get("serial") else ""
    return (
        f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{usb.get("idVendor", "XXXX")}", '
        f'ATTRS{{idProduct}}=="{usb.get("idProduct", "XXXX")}"{serial}, MODE="0660", GROUP="dialout", '
        'SYMLINK+="so100"'
    )


def port_rows(facts: PortFacts, rules_dir: str = UDEV_RULES) -> list[Row]:
    if not facts.exists:
        return [
            Row(
                "serial port",
                FAIL,
                f"{facts.path} does not exist",
                "plug in the arm's USB adapter and power; `rynn-edge doctor --scan` lists the ports where "
                "servos answer",
            )
        ]
    mode = stat.filemode(os.stat(facts.path).st_mode)
    found = f"{facts.path} ({mode}, group {facts.group})"
    rows = []
    # Serial adapters belong to dialout (Debian, Ubuntu, JetPack) or uucp (Arch, Fedora); a port in any
    # other group gets one of those by the udev rule.
    group = facts.group if facts.group in SERIAL_GROUPS else "dialout"
    if facts.readable_writable:
        rows.append(Row("serial port", OK, found + ", read/write"))
    else:
        rows.append(
            Row(
                "serial port",
                FAIL,
                f"{found}: no read/write access for {user_name()} (groups {', '.join(facts.user_groups)})",
                f"sudo usermod -aG {group} {user_name()} and log out and in, or install "
                f"the udev rule: echo '{udev_rule(facts.usb)}' | sudo tee {rules_dir}/{UDEV_RULE_FILE} && "
                "sudo udevadm control --reload && sudo udevadm trigger",
            )
        )
    if not facts.usb:
        rows.append(Row("udev rule", SKIP, f"{facts.path} is not a USB adapter (a pty or built-in UART)"))
        return rows
    ids = f"{facts.usb.get('idVendor')}:{facts.usb.get('idProduct')}"
    rule = udev_rule(facts.usb)
    written = [p for p in sorted(Path(rules_dir).glob("*.rules")) if _names_adapter(p.read_text(), facts.usb)]
    if written:
        rows.append(Row("udev rule", OK, f"adapter {ids} has a rule in {written[0]}"))
    else:
        rows.append(
            Row(
                "udev rule",
                WARN,
                f"adapter {ids}: no rule in {rules_dir}, the port name may change between boots",
                f"echo '{rule}' | sudo tee {rules_dir}/{UDEV_RULE_FILE} && sudo udevadm control --reload && "
                "sudo udevadm trigger; then use --port /dev/so100",
            )
        )
    return rows


def _names_adapter(rules: str, usb: dict[str, str]) -> bool:
    return all(f'{key}}}=="{usb.get(key, "?")}"' in rules for key in ("idVendor", "idProduct"))


def _read(bus, sid: int, reg: tuple[int, int]) -> tuple[int, int]:
    data, error = bus.read(sid, reg[0], reg[1])
    return int.from_bytes(data, "little"), error


def servo_rows(bus, calibration: dict[str, MotorCalibration] | None) -> list[Row]:
    """One row per motor of the SO100: answers, model, firmware, voltage, temperature, torque, limits."""
    rows, firmware = [], {}
    for name, sid in so100.MOTORS.items():
        check = f"servo {sid} {name}"
        try:
            model, error = bus.ping(sid)
            if model != so100.STS3215_MODEL:
                rows.append(
                    Row(
                        check,
                        FAIL,
                        f"model number {model}, not an STS3215 ({so100.STS3215_MODEL})",
                        f"id {sid} is another servo: replace it with an STS3215 and give it id {sid} "
                        "(LeRobot's setup_motors)",
                    )
                )
                continue
            values = {reg: _read(bus, sid, reg)[0] for reg in _REGISTERS}
            error |= values[so100.STATUS]
        except feetech.BusError as err:
            rows.append(
                Row(
                    check,
                    FAIL,
                    f"no answer ({err})",
                    f"check the cable and power of {name} and that it has id {sid} (LeRobot's setup_motors); "
                    "a silent bus: check --port and --baud",
                )
            )
            continue
        firmware[name] = (values[so100.FIRMWARE_MAJOR], values[so100.FIRMWARE_MINOR])
        rows.append(_servo_row(check, name, values, error, calibration))
    versions = set(firmware.values())
    if len(versions) > 1:
        common = max(versions, key=list(firmware.values()).count)
        odd = sorted(n for n, v in firmware.items() if v != common)
        rows.append(
            Row(
                "servo firmware",
                FAIL,
                f"{', '.join(odd)} run other firmware than {common[0]}.{common[1]}",
                "update them with Feetech's FD tool so all match (LeRobot refuses mixed firmware)",
            )
        )
    return rows


_REGISTERS = (
    so100.FIRMWARE_MAJOR,
    so100.FIRMWARE_MINOR,
    so100.TORQUE_ENABLE,
    so100.STATUS,
    so100.MIN_POSITION_LIMIT,
    so100.MAX_POSITION_LIMIT,
    PRESENT_VOLTAGE,
    MIN_VOLTAGE_LIMIT,
    MAX_VOLTAGE_LIMIT,
    PRESENT_TEMPERATURE,
    MAX_TEMPERATURE_LIMIT,
)


def _servo_row(check: str, name: str, v: dict, error: int, calibration: dict | None) -> Row:
    volts, temp = v[PRESENT_VOLTAGE] / 10, v[PRESENT_TEMPERATURE]
    limits = (v[so100.MIN_POSITION_LIMIT], v[so100.MAX_POSITION_LIMIT])
    found = (
        f"STS3215 fw {v[so100.FIRMWARE_MAJOR]}.{v[so100.FIRMWARE_MINOR]}, {volts:.1f} V, {temp} C, "
        f"torque {'on' if v[so100.TORQUE_ENABLE] else 'off'}, limits {limits[0]}..{limits[1]}"
    )
    if error & so100.FAULT_BITS:
        return Row(
            check,
            FAIL,
            f"{found}; error bits 0x{error:02x} ({so100.describe_error(error)})",
            "check the joint for a block or a short, let it cool, then power-cycle the arm",
        )
    if not v[MIN_VOLTAGE_LIMIT] <= v[PRESENT_VOLTAGE] <= v[MAX_VOLTAGE_LIMIT]:
        return Row(
            check,
            FAIL,
            f"{found}; outside its {v[MIN_VOLTAGE_LIMIT] / 10:.1f}-{v[MAX_VOLTAGE_LIMIT] / 10:.1f} V",
            "check the power supply: the SO100's STS3215s need their rated supply (7.4 V or 12 V version)",
        )
    if temp >= v[MAX_TEMPERATURE_LIMIT] - 10:
        return Row(
            check, WARN, f"{found}; near its {v[MAX_TEMPERATURE_LIMIT]} C limit", "let the servo cool down"
        )
    if calibration is not None and name in calibration:
        cal = calibration[name]
        if limits != (cal.range_min, cal.range_max):
            return Row(
                check,
                WARN,
                f"{found}; calibration file says {cal.range_min}..{cal.range_max}",
                "`rynn-edge run` rewrites the servo's limits from the calibration file at start; if the file "
                "is not this arm's, record one with `rynn-edge calibrate`",
            )
    return Row(check, OK, found)


def candidate_ports(globs: tuple[str, ...] = SERIAL_GLOBS) -> list[str]:
    return sorted({path for pattern in globs for path in glob.glob(pattern)})


def scan_ports(ports: list[str], baud: int) -> list[Row]:
    """Which ports have Feetech servos answering, and which ids (a broadcast-free id sweep of the SO100's)."""
    if not ports:
        return [Row("scan: ports", FAIL, "no serial port found", "plug in the arm's USB adapter")]
    rows = []
    for path in ports:
        try:
            with feetech.Bus(path, baud, BUS_TIMEOUT_MS, 0) as bus:
                answered = []
                for sid in so100.MOTORS.values():
                    with contextlib.suppress(feetech.BusError):
                        answered.append(f"{sid} (model {bus.ping(sid)[0]})")
        except OSError as err:
            rows.append(Row(f"scan: {path}", SKIP, f"cannot open: {err}"))
            continue
        if answered:
            rows.append(Row(f"scan: {path}", OK, f"servo ids {', '.join(answered)} answer at {baud} baud"))
        else:
            rows.append(Row(f"scan: {path}", SKIP, f"no Feetech servo answers at {baud} baud"))
    return rows
