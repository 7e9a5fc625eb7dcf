"""`rynn-edge doctor`'s rows about the robot computer itself: real-time scheduling, CPU governor, Jetson
power mode and clocks, free disk for the episode log.

A `Row` is one line of the doctor's table: what was found, a verdict, and (unless ok) what to do. Every
probe reads from injectable paths and commands, so the tests can show a row's other verdicts.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"  # only FAIL counts in the exit code
CAP_SYS_NICE = 23
LOOP_PRIORITY = 80  # the C control loop's SCHED_FIFO priority (ControlLoop rt_priority default)
TEGRA_RELEASE = "/etc/nv_tegra_release"


@dataclass(frozen=True)
class Row:
    check: str
    verdict: str
    found: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _effective_caps(status_file: str = "/proc/self/status") -> int:
    try:
        for line in Path(status_file).read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _fifo_allowed(priority: int) -> str | None:
    """Try SCHED_FIFO in a child process (this one must not change): None if granted, else the error."""
    code = (
        f"import os\ntry:\n    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param({priority}))\n"
        "except OSError as err:\n    print(err.strerror or err)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or None


def realtime_row(priority: int = LOOP_PRIORITY) -> Row:
    soft, hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    has_cap = bool(_effective_caps() >> CAP_SYS_NICE & 1)
    found = f"RLIMIT_RTPRIO {soft} (hard {hard}), CAP_SYS_NICE {'yes' if has_cap else 'no'}"
    refused = _fifo_allowed(priority)
    if refused is None:
        return Row("SCHED_FIFO", OK, f"priority {priority} granted; {found}")
    user = user_name()
    return Row(
        "SCHED_FIFO",
        FAIL,
        f"priority {priority} refused ({refused}); {found}",
        f"add the line '{user} - rtprio {priority}' to /etc/security/limits.d/99-rynn-edge.conf "
        f"(echo '{user} - rtprio {priority}' | sudo tee /etc/security/limits.d/99-rynn-edge.conf), then log "
        "out and in; in a container: --cap-add SYS_NICE --ulimit rtprio=99. Without it the servo loop "
        "runs SCHED_OTHER and misses cycles under load",
    )


def governor_row(cpu_root: str = "/sys/devices/system/cpu") -> Row:
    files = sorted(Path(cpu_root).glob("cpu[0-9]*/cpufreq/scaling_governor"))
    if not files:
        return Row("CPU governor", SKIP, f"no cpufreq under {cpu_root} (a virtual machine?)")
    governors = {f.parent.parent.name: f.read_text().strip() for f in files}
    slow = sorted(cpu for cpu, g in governors.items() if g != "performance")
    found = ", ".join(sorted(set(governors.values()))) + f" on {len(governors)} CPUs"
    if not slow:
        return Row("CPU governor", OK, found)
    return Row(
        "CPU governor",
        WARN,
        found,
        "frequency scaling adds latency to the loop: sudo cpupower frequency-set -g performance "
        "(Jetson: sudo jetson_clocks)",
    )


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def jetson_rows(
    release: str = TEGRA_RELEASE,
    model_file: str = "/proc/device-tree/model",
    nvpmodel: str = "nvpmodel",
    jetson_clocks: str = "jetson_clocks",
) -> list[Row]:
    if not Path(release).exists():
        return [Row("Jetson", SKIP, f"not a Jetson (no {release})")]
    model = Path(model_file).read_text().strip("\x00\n ") if Path(model_file).exists() else "unknown model"
    l4t = Path(release).read_text().splitlines()[0].lstrip("# ").split(", GCID")[0]
    rows = [Row("Jetson", OK, f"{model}, L4T {l4t}")]
    mode = _run([nvpmodel, "-q"]) if shutil.which(nvpmodel) else None
    if mode is None:
        rows.append(Row("power mode", SKIP, "nvpmodel not found or refused"))
    else:
        name = next((ln.split(":", 1)[1].strip() for ln in mode.splitlines() if "Power Mode" in ln), mode)
        hint = "" if "MAXN" in name else "below MAXN the model runs slower: sudo nvpmodel -m <MAXN id>"
        rows.append(Row("power mode", OK if not hint else WARN, name, hint))
    clocks = _run([jetson_clocks, "--show"]) if shutil.which(jetson_clocks) else None
    if clocks is None:
        rows.append(Row("clocks", SKIP, "jetson_clocks not found or refused (it needs root)"))
    else:
        gpu = next((ln.strip() for ln in clocks.splitlines() if ln.startswith("GPU")), "GPU clock not shown")
        rows.append(Row("clocks", OK, gpu))
    return rows


def step_record_bytes(n_servos: int = 6) -> int:
    """One episode-log `step` record (the bulk of the log: one per loop cycle) at its widest values."""
    big, value = 2**62, -123.456789012345
    record = {
        "kind": "step",
        "t_ns": big,
        "cycle": big,
        "deadline_ns": big,
        "period_error_ns": -big,
        "read_ns": big,
        "chunk_id": big,
        "held": False,
        "valid": [False] * n_servos,
        "servo_error": [255] * n_servos,
        "present_raw": [-4095] * n_servos,
        "goal_raw": [-4095] * n_servos,
        "state": [value] * n_servos,
        "goal": [value] * n_servos,
    }
    return len(json.dumps(record, separators=(",", ":"))) + 1


def disk_row(log_dir: str, duration_s: float, loop_rate_hz: float, margin: float = 2.0) -> Row:
    folder = Path(log_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = step_record_bytes() * loop_rate_hz * duration_s
    found = (
        f"{free / 2**30:.1f} GiB free at {folder}; a {duration_s:g} s episode at {loop_rate_hz:g} Hz logs "
        f"~{need / 2**20:.0f} MiB of steps (x{margin:g} for chunks and queries)"
    )
    if free >= need * margin:
        return Row("disk", OK, found)
    return Row("disk", FAIL, found, "free space or point --episode-log at a bigger disk (frames add more)")
