"""STS3215 control table: addresses, factory defaults, access rights and sign-magnitude encoding.

Source: Feetech's STS3215 memory table (the values LeRobot's feetech tables and the SDK use).
Multi-byte registers are little-endian (STS series).
"""

from __future__ import annotations

TABLE_SIZE = 256
MODEL_STS3215 = 777
FIRMWARE_MAJOR = 3
FIRMWARE_MINOR = 10

# Version (read-only)
FIRMWARE_MAJOR_VERSION = 0
FIRMWARE_MINOR_VERSION = 1
END = 2
MODEL_NUMBER = 3
# EPROM configuration
ID = 5
BAUD_RATE = 6
RETURN_DELAY_TIME = 7
RESPONSE_STATUS_LEVEL = 8
MIN_POSITION_LIMIT = 9
MAX_POSITION_LIMIT = 11
MAX_TEMPERATURE_LIMIT = 13
MAX_VOLTAGE_LIMIT = 14
MIN_VOLTAGE_LIMIT = 15
MAX_TORQUE_LIMIT = 16
PHASE = 18
UNLOADING_CONDITION = 19
LED_ALARM_CONDITION = 20
P_COEFFICIENT = 21
D_COEFFICIENT = 22
I_COEFFICIENT = 23
MINIMUM_STARTUP_FORCE = 24
CW_DEAD_ZONE = 26
CCW_DEAD_ZONE = 27
PROTECTION_CURRENT = 28
ANGULAR_RESOLUTION = 30
HOMING_OFFSET = 31
OPERATING_MODE = 33
PROTECTIVE_TORQUE = 34
PROTECTION_TIME = 35
OVERLOAD_TORQUE = 36
OVER_CURRENT_PROTECTION_TIME = 38
EPROM_END = 40  # addresses below this are EPROM (persist when written with Lock = 0)
# SRAM control
TORQUE_ENABLE = 40
ACCELERATION = 41
GOAL_POSITION = 42
GOAL_TIME = 44
GOAL_VELOCITY = 46
TORQUE_LIMIT = 48
LOCK = 55
# SRAM feedback (read-only)
PRESENT_POSITION = 56
PRESENT_VELOCITY = 58
PRESENT_LOAD = 60
PRESENT_VOLTAGE = 62
PRESENT_TEMPERATURE = 63
REG_WRITE_PENDING = 64
STATUS = 65
MOVING = 66
PRESENT_CURRENT = 69
# Factory area
MOVING_VELOCITY_THRESHOLD = 80
MAXIMUM_VELOCITY_LIMIT = 84
MAXIMUM_ACCELERATION = 85

TORQUE_RECENTRE = 128  # Torque_Enable value that makes the present position read 2048

# Status / ERR bits
ERR_VOLTAGE = 0x01
ERR_ANGLE = 0x02
ERR_OVERHEAT = 0x04
ERR_OVERCURRENT = 0x08
ERR_OVERLOAD = 0x20

# Baud_Rate register index -> bit/s (official SDK table, §1.6)
BAUD_RATES = {0: 1_000_000, 1: 500_000, 2: 250_000, 3: 128_000, 4: 115_200, 5: 76_800, 6: 57_600, 7: 38_400}

# Registers wider than one byte: address -> size. Everything else is one byte.
WIDE = {
    MODEL_NUMBER: 2,
    MIN_POSITION_LIMIT: 2,
    MAX_POSITION_LIMIT: 2,
    MAX_TORQUE_LIMIT: 2,
    MINIMUM_STARTUP_FORCE: 2,
    PROTECTION_CURRENT: 2,
    HOMING_OFFSET: 2,
    GOAL_POSITION: 2,
    GOAL_TIME: 2,
    GOAL_VELOCITY: 2,
    TORQUE_LIMIT: 2,
    PRESENT_POSITION: 2,
    PRESENT_VELOCITY: 2,
    PRESENT_LOAD: 2,
    PRESENT_CURRENT: 2,
}

# Sign-magnitude registers: address -> index of the sign bit.
SIGN_BIT = {
    HOMING_OFFSET: 11,
    GOAL_POSITION: 15,
    GOAL_TIME: 10,
    GOAL_VELOCITY: 15,
    PRESENT_POSITION: 15,
    PRESENT_VELOCITY: 15,
    PRESENT_LOAD: 10,
}

_DEFAULTS: dict[int, int] = {
    FIRMWARE_MAJOR_VERSION: FIRMWARE_MAJOR,
    FIRMWARE_MINOR_VERSION: FIRMWARE_MINOR,
    END: 0,
    MODEL_NUMBER: MODEL_STS3215,
    ID: 1,
    BAUD_RATE: 0,
    RETURN_DELAY_TIME: 250,
    RESPONSE_STATUS_LEVEL: 1,
    MIN_POSITION_LIMIT: 0,
    MAX_POSITION_LIMIT: 4095,
    MAX_TEMPERATURE_LIMIT: 70,
    MAX_VOLTAGE_LIMIT: 140,
    MIN_VOLTAGE_LIMIT: 40,
    MAX_TORQUE_LIMIT: 1000,
    PHASE: 0x0C,
    UNLOADING_CONDITION: 44,
    LED_ALARM_CONDITION: 47,
    P_COEFFICIENT: 32,
    D_COEFFICIENT: 32,
    I_COEFFICIENT: 0,
    MINIMUM_STARTUP_FORCE: 16,
    CW_DEAD_ZONE: 1,
    CCW_DEAD_ZONE: 1,
    PROTECTION_CURRENT: 511,
    ANGULAR_RESOLUTION: 1,
    HOMING_OFFSET: 0,
    OPERATING_MODE: 0,
    PROTECTIVE_TORQUE: 20,
    PROTECTION_TIME: 200,
    OVERLOAD_TORQUE: 80,
    37: 10,
    OVER_CURRENT_PROTECTION_TIME: 200,
    39: 200,
    TORQUE_ENABLE: 0,
    ACCELERATION: 0,
    GOAL_TIME: 0,
    GOAL_VELOCITY: 0,
    TORQUE_LIMIT: 1000,
    LOCK: 1,
    PRESENT_VOLTAGE: 74,
    PRESENT_TEMPERATURE: 28,
    MOVING_VELOCITY_THRESHOLD: 1,
    81: 2,
    82: 0x32,
    83: 1,
    MAXIMUM_VELOCITY_LIMIT: 254,
    MAXIMUM_ACCELERATION: 254,
    86: 1,
}

# Host-writable addresses; writes to anything else (version, feedback) are ignored like on the servo.
WRITABLE = frozenset(range(ID, LOCK + 1)) | frozenset(
    range(MOVING_VELOCITY_THRESHOLD, MAXIMUM_ACCELERATION + 2)
)


def size_of(address: int) -> int:
    return WIDE.get(address, 1)


def encode_signed(value: int, sign_bit: int) -> int:
    magnitude = min(abs(int(value)), (1 << sign_bit) - 1)
    return magnitude | (1 << sign_bit) if value < 0 else magnitude


def decode_signed(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def factory_table(servo_id: int) -> bytearray:
    """The 256-byte register file of a factory-fresh STS3215 answering on `servo_id`."""
    table = bytearray(TABLE_SIZE)
    for address, value in _DEFAULTS.items():
        table[address : address + size_of(address)] = value.to_bytes(size_of(address), "little")
    table[ID] = servo_id
    return table
