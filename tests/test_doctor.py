"""`rynn-edge doctor` against the bus simulator (`rynn-edge sim` on a pty, with fault injection), video and
image files as cameras, this GPU-less machine, a port without permission and RLIMIT_RTPRIO 0. Each row
must carry the right verdict and hint, in the table and in `--json`, and the exit code counts the FAILs."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rynn_edge.runtime.backends.artifact import Artifact, LocalGPU
from rynn_edge.runtime.bench import device_fit
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.robot import health, servo_probe
from rynn_edge.runtime.robot.calibration import MotorCalibration, save_calibration
from rynn_edge.runtime.robot.so100 import MOTORS
from rynn_edge.runtime.sim import launch

RYNN_EDGE = str(Path(sys.executable).with_name("rynn-edge"))
MACHINE_ROWS = {"CUDA", "GPU", "TensorRT", "SCHED_FIFO"}


def doctor(capsys, *args: str) -> tuple[int, dict[str, dict]]:
    """Run `doctor --json ARGS` in-process; (exit code, rows by check name)."""
    code = main(["doctor", "--json", *args])
    shown = json.loads(capsys.readouterr().out)
    assert code == shown["failures"] == sum(r["verdict"] == "fail" for r in shown["rows"])
    return code, {r["check"]: r for r in shown["rows"]}


def servo_rows(rows: dict[str, dict]) -> dict[int, dict]:
    return {int(name.split()[1]): row for name, row in rows.items() if name.startswith("servo ")}


def factory_calibration(path: Path, **limits: tuple[int, int]) -> Path:
    """The simulator's servos as shipped (limits 0..4095), `limits` overriding some motors."""
    save_calibration(
        path, {n: MotorCalibration(sid, 0, 0, *limits.get(n, (0, 4095))) for n, sid in MOTORS.items()}
    )
    return path


def test_all_servos_answer_and_match_the_calibration(capsys, tmp_path) -> None:
    calib = factory_calibration(tmp_path / "calib.json")
    with launch() as port:
        code, rows = doctor(capsys, "--port", port, "--calibration", str(calib))
    servos = servo_rows(rows)
    assert sorted(servos) == [1, 2, 3, 4, 5, 6]
    for row in servos.values():
        assert row["verdict"] == "ok" and row["hint"] == ""
        assert row["found"] == "STS3215 fw 3.10, 7.4 V, 28 C, torque off, limits 0..4095"
    assert rows["serial port"]["verdict"] == "ok" and "read/write" in rows["serial port"]["found"]
    assert rows["udev rule"]["verdict"] == "skip"  # a pty, not a USB adapter
    # Only rows about this machine may fail (CI has no GPU, no TensorRT, maybe no CAP_SYS_NICE).
    failed = {name for name, row in rows.items() if row["verdict"] == "fail"}
    assert failed <= MACHINE_ROWS and code == len(failed)


def test_missing_gpu_and_tensorrt_fail_with_their_fix() -> None:
    cpu_torch = device_fit.Device((3, 11, 7), "2.13.0+cpu", None, None, None, None)
    rows = {r.check: r for r in device_fit.software_rows(cpu_torch)}
    assert [r.verdict for r in rows.values()] == ["ok", "ok", "fail", "fail", "fail"]
    assert rows["CUDA"].found == "torch is a CPU build: backends cuda and tensorrt refuse"
    assert "NVIDIA's torch wheel for your JetPack" in rows["CUDA"].hint
    assert rows["GPU"].hint == "see the CUDA row"
    assert "python3-libnvinfer" in rows["TensorRT"].hint and "pip install tensorrt" in rows["TensorRT"].hint
    no_gpu = device_fit.Device((3, 10, 12), "2.5.0a0+nv24.08", "12.6", None, "10.3.0", None)
    cuda = next(r for r in device_fit.software_rows(no_gpu) if r.check == "CUDA")
    assert cuda.verdict == "fail" and "no GPU is usable" in cuda.found and "nvidia-smi" in cuda.hint


def test_limits_that_differ_from_the_calibration_warn(capsys, tmp_path) -> None:
    calib = factory_calibration(tmp_path / "calib.json", elbow_flex=(1024, 3072))
    with launch() as port:
        _, rows = doctor(capsys, "--port", port, "--calibration", str(calib))
    elbow = servo_rows(rows)[3]
    assert elbow["verdict"] == "warn" and "calibration file says 1024..3072" in elbow["found"]
    assert "rewrites the servo's limits" in elbow["hint"]


def test_a_silent_servo_and_a_wrong_model_fail_with_their_fix(capsys) -> None:
    with launch(faults=["silent:3", "model:5:1060"]) as port:
        code, rows = doctor(capsys, "--port", port)
    servos = servo_rows(rows)
    assert servos[3]["verdict"] == "fail" and "no answer" in servos[3]["found"]
    assert "has id 3" in servos[3]["hint"]
    assert servos[5]["verdict"] == "fail" and servos[5]["found"] == "model number 1060, not an STS3215 (777)"
    assert "replace it with an STS3215" in servos[5]["hint"]
    assert {sid for sid, row in servos.items() if row["verdict"] == "ok"} == {1, 2, 4, 6}
    failed = {name for name, row in rows.items() if row["verdict"] == "fail"}
    assert failed - MACHINE_ROWS == {"servo 3 elbow_flex", "servo 5 wrist_roll"} and code == len(failed)


def test_an_overloaded_servo_fails(capsys) -> None:
    with launch(faults=["overload:2"]) as port:
        _, rows = doctor(capsys, "--port", port)
    row = servo_rows(rows)[2]
    assert row["verdict"] == "fail" and "error bits 0x20 (overload)" in row["found"]


def test_scan_finds_the_port_where_servos_answer(capsys) -> None:
    with launch(ids=(1, 2)) as port:
        _, rows = doctor(capsys, "--port", port, "--scan")
    assert rows[f"scan: {port}"]["verdict"] == "ok"
    assert rows[f"scan: {port}"]["found"] == "servo ids 1 (model 777), 2 (model 777) answer at 1000000 baud"


def test_cameras_from_video_image_and_synthetic_sources(capsys, tmp_path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), np.zeros((48, 64, 3), np.uint8))
    cameras = [f"clip={video}", f"still={still}", f"gone={tmp_path / 'gone.mp4'}", "fake=synthetic"]
    _, rows = doctor(capsys, *[arg for c in cameras for arg in ("--camera", c)])
    clip = rows["camera clip"]
    assert clip["verdict"] == "ok" and clip["found"].startswith(f"{video}: 64x48, ")
    rate = float(clip["found"].split(", ")[1].split()[0])
    assert 14 <= rate <= 22, clip  # the file's 20 fps, measured (a loaded CI box may lag)
    assert rows["camera still"]["verdict"] == "fail" and "still image" in rows["camera still"]["hint"]
    assert rows["camera gone"]["verdict"] == "fail" and "does not exist" in rows["camera gone"]["found"]
    assert rows["camera fake"]["verdict"] == "ok" and "320x240" in rows["camera fake"]["found"]
    _, rows = doctor(capsys, "--camera", f"clip={video}", "--camera-size", "640x480")
    assert rows["camera clip"]["verdict"] == "warn" and "640x480 asked" in rows["camera clip"]["found"]


def test_bad_input_is_refused_before_probing(capsys, tmp_path) -> None:
    assert main(["doctor", "--camera", "front"]) == 2
    assert main(["doctor", "--camera-size", "big"]) == 2
    assert main(["doctor", "--calibration", str(tmp_path / "none.json")]) == 2
    assert main(["doctor", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "expected NAME=SOURCE" in err and "WIDTHxHEIGHT" in err and "rynn-edge calibrate" in err
    assert "no manifest.json" in err


def test_table_shows_each_verdict_and_hint(capsys) -> None:
    with launch(faults=["silent:6"]) as port:
        code = main(["doctor", "--port", port])
    out = capsys.readouterr().out
    assert "FAIL  servo 6 gripper" in out and "-> check the cable and power of gripper" in out
    assert "  ok  servo 1 shoulder_pan" in out and f"{code} check(s) failed" in out


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="hands the pty to nobody and drops root's capabilities: needs root and util-linux setpriv",
)
def test_port_without_permission_and_rtprio_0(tmp_path) -> None:
    """Root without CAP_DAC_OVERRIDE / CAP_SYS_NICE and with RLIMIT_RTPRIO 0: a real denial, not a fake."""
    with launch() as port:
        pts = os.path.realpath(port)
        os.chown(pts, 65534, 65534)
        os.chmod(pts, 0o600)

        def no_rtprio() -> None:
            resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))

        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-sys_nice", "--"]
            + [RYNN_EDGE, "doctor", "--json", "--port", port],
            capture_output=True,
            text=True,
            preexec_fn=no_rtprio,
            timeout=120,
        )
    shown = json.loads(done.stdout)
    rows = {r["check"]: r for r in shown["rows"]}
    assert done.returncode == shown["failures"]
    fifo = rows["SCHED_FIFO"]
    assert fifo["verdict"] == "fail" and "RLIMIT_RTPRIO 0 (hard 0), CAP_SYS_NICE no" in fifo["found"]
    assert "'root - rtprio 80'" in fifo["hint"] and "/etc/security/limits.d/" in fifo["hint"]
    serial = rows["serial port"]
    assert serial["verdict"] == "fail" and "no read/write access" in serial["found"]
    assert "usermod -aG dialout" in serial["hint"] and 'GROUP="dialout"' in serial["hint"]
    assert not any(name.startswith("servo ") for name in rows)  # no bus opened on a port it cannot use


def test_sched_fifo_row_follows_the_capability_and_the_limit() -> None:
    status = Path("/proc/self/status").read_text().splitlines()
    caps = int(next(ln for ln in status if ln.startswith("CapEff:")).split()[1], 16)
    allowed = bool(caps >> health.CAP_SYS_NICE & 1) or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= 80
    assert health.realtime_row().verdict == ("ok" if allowed else "fail")


def test_udev_rule_for_the_usb_adapter(tmp_path) -> None:
    usb = {"idVendor": "1a86", "idProduct": "55d3", "serial": "58FA0830431"}
    facts = servo_probe.PortFacts("/dev/null", True, True, "dialout", ("dialout",), usb)
    rule = 'ATTRS{idVendor}=="1a86", ATTRS{idProduct}=="55d3", ATTRS{serial}=="58FA0830431"'
    _, udev = servo_probe.port_rows(facts, str(tmp_path))
    assert udev.verdict == "warn" and rule in udev.hint and 'SYMLINK+="so100"' in udev.hint
    (tmp_path / "99-so100.rules").write_text(servo_probe.udev_rule(usb) + "\n")
    assert servo_probe.port_rows(facts, str(tmp_path))[1].verdict == "ok"


def test_governor_and_jetson_rows_from_faked_sysfs(tmp_path) -> None:
    for cpu, governor in (("cpu0", "performance"), ("cpu1", "schedutil")):
        (tmp_path / cpu / "cpufreq").mkdir(parents=True)
        (tmp_path / cpu / "cpufreq" / "scaling_governor").write_text(governor + "\n")
    row = health.governor_row(str(tmp_path))
    assert row.verdict == "warn" and "frequency-set -g performance" in row.hint
    (tmp_path / "cpu1" / "cpufreq" / "scaling_governor").write_text("performance\n")
    assert health.governor_row(str(tmp_path)).verdict == "ok"

    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    model.write_text("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    nvpmodel = tmp_path / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\necho 'NV Power Mode: 15W'\necho 0\n")
    nvpmodel.chmod(0o755)
    rows = health.jetson_rows(str(release), str(model), str(nvpmodel), str(tmp_path / "no-jetson_clocks"))
    board = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert rows[0].found == f"{board}, L4T R36 (release), REVISION: 4.3"
    assert rows[1].verdict == "warn" and rows[1].found == "15W" and "nvpmodel -m" in rows[1].hint
    assert rows[2].verdict == "skip"
    assert health.jetson_rows(str(tmp_path / "absent"))[0].verdict == "skip"


def test_disk_row_against_the_planned_episode(tmp_path) -> None:
    assert health.disk_row(str(tmp_path / "logs"), 600, 100).verdict == "ok"
    free = shutil.disk_usage(tmp_path).free
    row = health.disk_row(str(tmp_path), free / health.step_record_bytes(), 1.0)
    assert row.verdict == "fail" and "--episode-log" in row.hint


TRT_TARGET = {
    "kind": "tensorrt",
    "gpu": {"name": "Orin", "compute_capability": "8.7"},
    "tensorrt_version": "10.3.0",
}


def device(gpu: LocalGPU | None, trt: str | None) -> device_fit.Device:
    return device_fit.Device((3, 10, 12), "2.5.0a0+nv24.08", "12.6" if gpu else None, gpu, trt, None)


def test_engines_against_this_gpu_and_tensorrt(tmp_path) -> None:
    artifact = Artifact(tmp_path, {"target": TRT_TARGET})
    orin, rtx = LocalGPU("Orin", "8.7"), LocalGPU("NVIDIA GeForce RTX 4090", "8.9")
    assert device_fit.engine_row(artifact, device(orin, "10.3.0")).verdict == "ok"
    for other, says in (
        (device(None, None), "no usable NVIDIA GPU"),
        (device(rtx, "10.3.0"), "this GPU is NVIDIA GeForce RTX 4090"),
        (device(orin, "10.7.0"), "this machine has 10.7.0"),
    ):
        row = device_fit.engine_row(artifact, other)
        assert row.verdict == "fail" and says in row.found
        assert row.hint == f"rynn-edge build {tmp_path} on this machine"
    onnx = Artifact(tmp_path, {"target": {"kind": "onnxruntime"}})
    assert device_fit.engine_row(onnx, device(None, None)).verdict == "ok"
    row = device_fit.engine_row(onnx, device(orin, "10.3.0"))
    assert row.verdict == "warn" and row.hint.startswith(f"rynn-edge build {tmp_path}")


def test_software_rows_on_a_jetson() -> None:
    rows = {r.check: r for r in device_fit.software_rows(device(LocalGPU("Orin", "8.7"), "10.3.0"))}
    assert all(r.verdict == "ok" for r in rows.values()), rows
    assert rows["GPU"].found == "Orin, compute capability 8.7" and rows["TensorRT"].found == "10.3.0"


def test_memory_fit_of_an_artifact(capsys, so100_fp32, tmp_path) -> None:
    art, _ = so100_fp32
    code, rows = doctor(capsys, str(art))
    row = rows[f"memory {art.name}"]
    assert row["verdict"] == "ok" and row["found"].startswith("needs ") and "MemAvailable" in row["found"]
    assert rows[f"engines {art.name}"]["verdict"] == "ok"
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8000000 kB\nMemAvailable:       1024 kB\n")
    row = device_fit.memory_row(Artifact.read(art), device_fit.this_device(), str(meminfo))
    assert row.verdict == "fail" and "0.0 GiB available" in row.found and "int4" in row.hint
