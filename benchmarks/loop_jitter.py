"""Control-loop timing under CPU-heavy torch inference in the same process: C loop vs a Python SDK loop.

For each rate (100 Hz, 200 Hz) runs, on the same simulator and under the same load:
  * the C ControlLoop (own pthread, clock_nanosleep on absolute deadlines, one write per cycle);
  * a pure-Python loop with the official SDK (GroupSyncWrite + GroupSyncRead, time.sleep to the deadline).
Period error = wake time - scheduled deadline. Load: threads doing large torch matmuls (inference stand-in).

    python benchmarks/loop_jitter.py [--seconds 5] [--load-threads 2]
Writes benchmarks/results/loop_jitter.{json,csv}.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
from bus_cycle import machine, sdk_group, write_report  # same folder

from rynn_edge.kernels import _native as fe
from rynn_edge.kernels.feetech import records_to_numpy
from rynn_edge.runtime.sim import launch

IDS = [1, 2, 3, 4, 5, 6]
# The simulator stands in for servo hardware, which answers in silicon and is never starved of CPU.
SIM_RT_PRIORITY = 70


class TorchLoad:
    """Repeated 1024x1024 fp32 matmuls in `threads` Python threads (torch releases the GIL inside)."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.stop = threading.Event()
        self.matmuls = 0
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(threads)]

    def work(self) -> None:
        a = self.torch.randn(1024, 1024)
        b = self.torch.randn(1024, 1024)
        while not self.stop.is_set():
            a = self.torch.tanh(a @ b)
            self.matmuls += 1

    def __enter__(self) -> TorchLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def stats(name: str, rate: float, err_ns: np.ndarray, **extra: object) -> dict:
    us = err_ns / 1e3
    return {
        "impl": name,
        "rate_hz": rate,
        "cycles": len(us),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
        **extra,
    }


def run_c(bus: fe.Bus, rate: float, seconds: float) -> dict:
    loop = fe.ControlLoop(bus, IDS, rate, 30.0, [0] * 6, [4095] * 6, [50] * 6, max_missed_cycles=1_000_000)
    loop.start()
    t0 = time.monotonic_ns()
    rows = [[2048 + int(200 * np.sin(k / 10))] * 6 for k in range(int(seconds * 30) + 30)]
    loop.submit_chunk(t0, rows, 1)
    time.sleep(seconds)
    loop.stop()
    status = loop.status()
    rec = records_to_numpy(loop)
    bus_us = (rec["bus_done_ns"] - rec["wake_ns"]) / 1e3
    missing = int((rec["flags"] & fe.RECORD_VALID == 0).any(axis=1).sum())
    on_time = rec["bus_done_ns"][:-1] <= rec["deadline_ns"][1:]  # previous cycle ended before this deadline
    sched_us = rec["period_error_ns"][1:][on_time] / 1e3
    return stats(
        "C ControlLoop",
        rate,
        rec["period_error_ns"].astype(np.float64),
        sched=status["sched"],
        overruns=status["overruns"],
        cycles_missing_replies=missing,
        bus_p50_us=float(np.percentile(bus_us, 50)),
        bus_p99_us=float(np.percentile(bus_us, 99)),
        wake_p99_us_after_on_time_cycle=float(np.percentile(sched_us, 99)),
        cycles_after_late_cycle=int((~on_time).sum()),
    )


def run_sdk(port: str, rate: float, seconds: float) -> dict:
    from scservo_sdk import COMM_SUCCESS

    handler, writer, reader = sdk_group(port)
    period = 1.0 / rate
    errors, failures, bus_s, on_time = [], 0, [], []
    prev_end = 0.0
    deadline = time.monotonic() + period
    end = deadline + seconds
    try:
        while deadline < end:
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            wake = time.monotonic()
            errors.append((wake - deadline) * 1e9)
            on_time.append(prev_end <= deadline)
            goal = 2048 + int(200 * np.sin(wake * 3))
            for i in IDS:
                writer.changeParam(i, [goal & 0xFF, goal >> 8])
            writer.txPacket()
            failures += reader.txRxPacket() != COMM_SUCCESS
            prev_end = time.monotonic()
            bus_s.append(prev_end - wake)
            deadline += period
            while deadline < time.monotonic():  # same overrun policy as the C loop: skip, don't burst
                deadline += period
    finally:
        handler.closePort()
    return stats(
        "Python scservo_sdk loop",
        rate,
        np.array(errors),
        failed_reads=failures,
        bus_p50_us=float(np.percentile(np.array(bus_s) * 1e6, 50)),
        bus_p99_us=float(np.percentile(np.array(bus_s) * 1e6, 99)),
        wake_p99_us_after_on_time_cycle=float(np.percentile(np.array(errors)[np.array(on_time)] / 1e3, 99)),
        cycles_after_late_cycle=int(len(on_time) - sum(on_time)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--load-threads", type=int, default=2)
    args = parser.parse_args()
    info = machine()
    rows = []
    with launch(ids=IDS, wire_time=True, rt_priority=SIM_RT_PRIORITY) as port:
        sim_sched = port.sched
        with fe.Bus(port, timeout_ms=50.0) as bus:
            for i in IDS:
                bus.write(i, 7, b"\x00")
        with TorchLoad(args.load_threads) as load:
            for rate in (100.0, 200.0):
                with fe.Bus(port, timeout_ms=50.0, retries=2) as bus:  # a cycle is capped at 0.9 period
                    rows.append(run_c(bus, rate, args.seconds))
                rows.append(run_sdk(port, rate, args.seconds))
            matmuls = load.matmuls
    ratios = {}
    for rate in (100.0, 200.0):
        c_row = next(r for r in rows if r["rate_hz"] == rate and r["impl"].startswith("C"))
        py_row = next(r for r in rows if r["rate_hz"] == rate and r["impl"].startswith("Python"))
        ratios[f"{int(rate)}Hz_python_p99_over_c_p99"] = py_row["p99_us"] / max(c_row["p99_us"], 1e-3)
    report = {
        "benchmark": "loop period error (wake - absolute deadline) under torch CPU load in the same process",
        "load": f"{args.load_threads} threads of 1024x1024 fp32 matmul+tanh, torch intra-op threads 1; "
        f"{matmuls} matmuls during the run",
        "simulator": "rynn-edge sim --wire-time, 6 x STS3215, Return_Delay_Time=0",
        "simulator_sched": sim_sched,
        "seconds_per_run": args.seconds,
        "machine": info | {"loadavg_at_end": os.getloadavg()},
        "results": rows,
        "ratios": ratios,
        "target": "C p99 <= 200 us and >= 10x lower than Python's",
    }
    write_report("loop_jitter", report, rows)
    for r in rows:
        print(
            f"{r['impl']:25s} {r['rate_hz']:5.0f} Hz  p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us"
            f"  max {r['max_us']:8.1f} us  | bus p50 {r['bus_p50_us']:7.0f} p99 {r['bus_p99_us']:7.0f} us"
            f"  | wake p99 after on-time cycle {r['wake_p99_us_after_on_time_cycle']:7.1f} us"
        )
    print(ratios)


if __name__ == "__main__":
    main()
