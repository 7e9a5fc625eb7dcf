"""Bus cycle time (SYNC_WRITE 6 goals + SYNC_READ 6 positions) on the simulator with wire-time emulation.

Compares the C bus (one write() carrying both packets, and two separate calls) with the official SDK
(GroupSyncWrite + GroupSyncRead), and both with the wire-time floor (10 bits per byte at the bus rate):
26 + 14 + 6 x 8 = 88 bytes x 10 us at 1 Mbit/s = 0.88 ms (Return_Delay_Time set to 0, as LeRobot does).

    python benchmarks/bus_cycle.py [--cycles 500]
Writes benchmarks/results/bus_cycle.{json,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rynn_edge.kernels import _native as fe
from rynn_edge.runtime.sim import launch

IDS = [1, 2, 3, 4, 5, 6]
# The simulator stands in for servo hardware, which answers in silicon and is never starved of CPU.
SIM_RT_PRIORITY = 70
BAUD = 1_000_000
FLOOR_BYTES = 26 + 14 + 6 * 8
RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, report: dict, rows: list[dict]) -> None:
    """benchmarks/results/NAME.json (the whole report) and NAME.csv (one line per row)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def summarize(name: str, seconds: list[float], floor_s: float) -> dict:
    us = np.array(seconds) * 1e6
    return {
        "impl": name,
        "cycles": len(us),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
        "mean_us": float(us.mean()),
        "p50_over_floor": float(np.percentile(us, 50) / (floor_s * 1e6)),
    }


def c_cycles(port: str, n: int, combined: bool) -> tuple[list[float], int]:
    out, missing = [], 0
    goals = [(2048).to_bytes(2, "little")] * 6
    with fe.Bus(port, baud=BAUD, timeout_ms=20.0, retries=0) as bus:
        for _ in range(n):
            t = time.perf_counter()
            if combined:
                result = bus.sync_write_read(IDS, 42, goals, 56, 2)
            else:
                bus.sync_write(IDS, 42, goals)
                result = bus.sync_read(IDS, 56, 2)
            out.append(time.perf_counter() - t)
            missing += sum(d is None for d, _ in result)
            time.sleep(0.002)
    return out, missing


def sdk_group(port: str):
    """The official SDK on `port`: its port handler, a Goal_Position sync-write of mid-range goals and a
    Present_Position sync-read, both over IDS, as LeRobot's SO100 loop uses them."""
    import scservo_sdk as scs

    handler = scs.PortHandler(port)
    handler.openPort()
    handler.setBaudRate(BAUD)
    packets = scs.PacketHandler(0)
    writer = scs.GroupSyncWrite(handler, packets, 42, 2)
    reader = scs.GroupSyncRead(handler, packets, 56, 2)
    for i in IDS:
        writer.addParam(i, [0x00, 0x08])
        reader.addParam(i)
    return handler, writer, reader


def sdk_cycles(port: str, n: int) -> tuple[list[float], int]:
    from scservo_sdk import COMM_SUCCESS

    handler, writer, reader = sdk_group(port)
    out, failures = [], 0
    try:
        for _ in range(n):
            t = time.perf_counter()
            writer.txPacket()
            failures += reader.txRxPacket() != COMM_SUCCESS
            out.append(time.perf_counter() - t)
            time.sleep(0.002)
    finally:
        handler.closePort()
    return out, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    args = parser.parse_args()
    floor_s = FLOOR_BYTES * 10 / BAUD
    info = machine()
    with launch(ids=IDS, baud=BAUD, wire_time=True, rt_priority=SIM_RT_PRIORITY) as port:
        sim_sched = port.sched
        with fe.Bus(port, timeout_ms=50.0) as bus:
            for i in IDS:
                bus.write(i, 7, b"\x00")  # Return_Delay_Time = 0 (LeRobot configure())
        rows = []
        c_one, c_one_missing = c_cycles(port, args.cycles, combined=True)
        rows.append(
            summarize("C sync_write_read (one write)", c_one, floor_s) | {"missing_replies": c_one_missing}
        )
        c_two, c_two_missing = c_cycles(port, args.cycles, combined=False)
        rows.append(
            summarize("C sync_write + sync_read", c_two, floor_s) | {"missing_replies": c_two_missing}
        )
        sdk, sdk_fail = sdk_cycles(port, args.cycles)
        rows.append(
            summarize("scservo_sdk GroupSyncWrite + GroupSyncRead", sdk, floor_s) | {"failed_reads": sdk_fail}
        )
    report = {
        "benchmark": "bus cycle: SYNC_WRITE Goal_Position x6 + SYNC_READ Present_Position x6",
        "measured": "host wall time per cycle; simulator --wire-time at 1 Mbit/s; Return_Delay_Time=0",
        "loadavg_at_end": os.getloadavg(),
        "wire_floor_us": floor_s * 1e6,
        "floor_source": "88 bytes x 10 us (10 bits per byte at 1 Mbit/s)",
        "machine": info,
        "simulator_sched": sim_sched,
        "results": rows,
        "c_p50_over_floor": rows[0]["p50_over_floor"],
        "sdk_p50_over_c_p50": rows[2]["p50_us"] / rows[0]["p50_us"],
        "target": "C within 1.3x of the wire floor (p50)",
    }
    if rows[2]["p50_us"] < floor_s * 1e6:
        report["note"] = (
            "SDK p50 is below the physical wire floor: scservo_sdk 1.0.0 never flushes RX before a request, "
            "so after one late read it keeps consuming the PREVIOUS cycle's replies (one cycle stale)"
        )
    write_report("bus_cycle", report, rows)
    for r in rows:
        print(
            f"{r['impl']:45s} p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us"
            f"  x floor {r['p50_over_floor']:.2f}"
        )
    print(f"wire floor {floor_s * 1e6:.0f} us; SDK/C p50 = {report['sdk_p50_over_c_p50']:.2f}")


if __name__ == "__main__":
    main()
