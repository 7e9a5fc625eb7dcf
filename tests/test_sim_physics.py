"""The physics twin (`rynn-edge sim --physics`): the SO101 MuJoCo model behind the simulated servo bus.

In-process tests drive `PhysicsServo`s on a synthetic clock (deterministic, no wall-time flakiness);
the process tests go through the pty with the official Feetech SDK and `rynn-edge run`. They skip only
where MuJoCo or headless GL cannot be installed (`make setup` installs both).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from scservo_sdk import COMM_SUCCESS, GroupSyncRead, GroupSyncWrite, PacketHandler
from sdk_port import Port

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import save_calibration
from rynn_edge.runtime.robot.cameras import Camera
from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim import launch
from rynn_edge.runtime.sim.mesh_decimate import decimate_file, read_stl
from rynn_edge.runtime.sim.model_cache import WHEEL, ensure_model, model_dir
from rynn_edge.runtime.sim.physics import PhysicsServo, Twin, import_mujoco
from rynn_edge.runtime.sim.render import renderer
from rynn_edge.runtime.sim.scene import build_scene
from rynn_edge.runtime.sim.video import write_gif

try:  # skip only where MuJoCo or headless GL is missing; anything else (the model download) fails
    _mujoco = import_mujoco()
    _empty = _mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
    renderer(_mujoco, _empty, 24, 32).close()
except UserError as err:
    pytest.skip(f"physics twin unavailable: {err}", allow_module_level=True)
SCENE = build_scene("table")

STEP_RAD = 0.5
STEP_TICKS = round(STEP_RAD * 4096 / (2 * math.pi))
DT = 0.005  # the host's polling period on the synthetic clock


class Arm:
    """Six physics servos (ids 1..6 = shoulder_pan..gripper) on a synthetic clock."""

    def __init__(self, seed: int = 0, positions: tuple[float, ...] = (2048,) * 6) -> None:
        self.twin = Twin(SCENE, 0.0, seed=seed)
        self.servos = [PhysicsServo(self.twin, j, j + 1, p, 0.0, 0) for j, p in enumerate(positions)]
        self.t = 0.0

    def write(self, sid: int, address: int, value: int) -> None:
        size = ct.size_of(address)
        self.servos[sid - 1].write(address, int(value).to_bytes(size, "little"), self.t)

    def torque(self, on: bool) -> None:
        for sid in range(1, 7):
            self.write(sid, ct.TORQUE_ENABLE, int(on))

    def run(self, seconds: float) -> list[tuple[float, list[dict]]]:
        """Advance, sampling every servo each DT: [(time, snapshots)]."""
        out = []
        for _ in range(round(seconds / DT)):
            self.t += DT
            for s in self.servos:
                s.advance(self.t)
            out.append((self.t, [s.snapshot() for s in self.servos]))
        return out


@pytest.mark.parametrize("sid", [2, 3])  # shoulder_lift, elbow_flex: the joints that carry the arm
def test_step_response_settles_within_the_measured_bounds(sid):
    arm = Arm()
    arm.torque(True)
    held = arm.run(1.0)
    start = held[-1][1][sid - 1]["present"]
    assert abs(start - 2048) <= 1  # holds against gravity
    goal = start + STEP_TICKS
    arm.write(sid, ct.GOAL_POSITION, goal)
    t0 = arm.t
    trace = [(t - t0, snap[sid - 1]) for t, snap in arm.run(1.0)]
    settle = max(t for t, s in trace if abs(s["present"] - goal) > 5)
    overshoot = max(s["present"] for _, s in trace) - goal
    assert 0.25 <= settle <= 0.40, settle
    assert 32 <= overshoot <= 85, overshoot
    assert trace[10][1]["moving"] and not trace[-1][1]["moving"]
    assert trace[-1][1]["load"] != 0 and abs(trace[-1][1]["present"] - goal) <= 1


def test_torque_off_lets_the_arm_fall_under_gravity():
    arm = Arm()
    arm.torque(True)
    arm.run(0.5)
    arm.write(2, ct.TORQUE_ENABLE, 0)
    trace = arm.run(0.5)
    lift = [snap[1] for _, snap in trace]
    assert lift[-1]["present"] - lift[0]["present"] > 100  # shoulder_lift drops (toward the table)
    assert lift[-1]["load"] == 0 and lift[-1]["torque"] == 0
    assert abs(trace[-1][1][0]["present"] - 2048) <= 1  # the others still hold


def test_driving_into_the_table_raises_load_and_trips_overload_protection():
    arm = Arm()
    arm.torque(True)
    arm.write(2, ct.PROTECTION_TIME, 50)  # 0.5 s above Overload_Torque (80%)
    arm.run(0.3)
    quiet = abs(arm.servos[1].snapshot()["load"])
    arm.write(2, ct.GOAL_POSITION, 2048 + 1500)  # shoulder_lift far down: the gripper meets the table
    trace = arm.run(2.0)
    lift = [(t, snap[1]) for t, snap in trace]
    pressing = [s["load"] for _, s in lift if s["torque"]]
    assert max(pressing) >= 800 > quiet
    tripped = next(t for t, s in lift if s["status"] & ct.ERR_OVERLOAD)
    first_over = next(t for t, s in lift if s["load"] > 800)
    assert 0.5 - 2 * DT <= tripped - first_over <= 0.6
    assert lift[-1][1]["torque"] == 0 and lift[-1][1]["load"] == 0  # Unloading_Condition drops torque
    assert lift[-1][1]["present"] < 2048 + 1500 - 100  # the table stopped it short of its goal


def render(arm: Arm) -> np.ndarray:
    r = renderer(arm.twin.mujoco, arm.twin.model, 120, 160)
    try:
        r.update_scene(arm.twin.data, camera="front")
        return r.render().copy()
    finally:
        r.close()


def test_frames_are_identical_for_the_same_seed_and_change_when_the_arm_moves():
    frames = []
    for seed in (0, 0, 1):
        arm = Arm(seed=seed)
        arm.torque(True)
        arm.run(0.2)
        frames.append(render(arm))
    assert np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0], frames[2])  # the seed places the cube
    arm.write(1, ct.GOAL_POSITION, 2048 + 400)
    arm.run(0.5)
    moved = render(arm)
    assert np.abs(moved.astype(int) - frames[2]).mean() > 1.0


def sync_read(port, ph, address, size=2):
    group = GroupSyncRead(port, ph, address, size)
    for i in range(1, 7):
        group.addParam(i)
    assert group.txRxPacket() == COMM_SUCCESS
    return [group.getData(i, address, size) for i in range(1, 7)]


def test_feetech_sdk_drives_the_twin_and_its_cameras_follow():
    with launch(physics=()) as sim:
        port, ph = Port(sim), PacketHandler(0)
        assert port.openPort()
        cams = [Camera(name, f"sim:{sim}") for name in ("front", "wrist")]
        try:
            assert ph.ping(port, 3)[:2] == (ct.MODEL_STS3215, COMM_SUCCESS)
            present = sync_read(port, ph, ct.PRESENT_POSITION)
            group = GroupSyncWrite(port, ph, ct.GOAL_POSITION, 2)
            for i, p in enumerate(present, 1):
                group.addParam(i, list(int(p).to_bytes(2, "little")))
            assert group.txPacket() == COMM_SUCCESS
            for i in range(1, 7):
                assert ph.write1ByteTxRx(port, i, ct.TORQUE_ENABLE, 1)[1] == COMM_SUCCESS
            before = [cam.wait_first(5.0).image for cam in cams]
            goal = present[0] + 500
            assert ph.write2ByteTxRx(port, 1, ct.GOAL_POSITION, goal)[1] == COMM_SUCCESS
            deadline = time.monotonic() + 5.0
            while abs(sync_read(port, ph, ct.PRESENT_POSITION)[0] - goal) > 5:
                assert time.monotonic() < deadline, sync_read(port, ph, ct.PRESENT_POSITION)
                time.sleep(0.02)
            time.sleep(0.2)  # a frame or two rendered after the arrival
            after = [cam.latest().image for cam in cams]
            for a, b in zip(before, after, strict=True):
                assert a.shape == (240, 320, 3) and np.abs(a.astype(int) - b).mean() > 1.0
            loads = [ct.decode_signed(v, 10) for v in sync_read(port, ph, ct.PRESENT_LOAD)]
            assert loads[1] != 0  # shoulder_lift holds the arm against gravity
            twin = sim.state()["twin"]
            assert twin["frames"] > 10 and twin["render_ms"] > 0 and twin["realtime_factor"] > 0.5
        finally:
            for cam in cams:
                cam.close()
            port.closePort()


def run_command(bundle: dict, tmp_path, link, cameras: tuple[str, ...], duration: float) -> list[str]:
    calibration = tmp_path / "calibration.json"
    save_calibration(calibration, so100.simulator_calibration())
    return [
        sys.executable, "-m", "rynn_edge.runtime.cli", "run", str(bundle["model"]),
        "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"]), "--robot", "so100",
        "--port", str(link), "--port-wait", "120", "--calibration", str(calibration),
        "--instruction", "put the cube in the box", "--duration", str(duration), "--loop-rate", "50",
        "--max-missed-cycles", "25", "--json", "--episode-log", str(tmp_path / "episode.jsonl"),
        *[arg for camera in cameras for arg in ("--camera", camera)],
    ]  # fmt: skip


class Run:
    """`rynn-edge run` in a child; its stderr pumped on a thread (it signals when it waits for the port)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.waiting = threading.Event()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "waiting for" in line:
                self.waiting.set()

    def finish(self, sim) -> tuple[dict, list[dict]]:
        """The run's summary and the twin's servos read back after it ended."""
        self.proc.wait(timeout=120)
        self.pump.join(10)
        servos = sim.state()["servos"]
        stdout = self.proc.stdout.read()
        assert stdout.strip(), "".join(self.lines)
        return json.loads(stdout), servos

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_run_drives_the_twin_through_its_rendered_cameras(so100_bundle, tmp_path):
    link = tmp_path / "ttySO100"
    with launch(link=link, physics=()) as sim:  # the cameras open before the run loads its model
        cameras = (f"front=sim:{link}", f"wrist=sim:{link}")
        run = Run(run_command(so100_bundle, tmp_path, link, cameras, duration=2.0))
        try:
            summary, servos = run.finish(sim)
        finally:
            run.kill()
    assert (summary["exit_code"], summary["exit_reason"]) == (0, "completed"), summary["message"]
    assert summary["chunks_executed"] >= 1 and all(s["torque"] == 0 for s in servos)
    assert set(summary["twin_render_ms"]) == {"front", "wrist"}
    assert summary["twin_render_ms"]["front"]["p50"] > 0


def test_an_injected_overload_stops_the_run_with_torque_off(so100_bundle, tmp_path):
    link = tmp_path / "ttySO100"
    run = Run(
        run_command(so100_bundle, tmp_path, link, ("front=synthetic", "wrist=synthetic"), duration=30.0)
    )
    try:
        # the run waits for the port once its model is loaded, so the fault's clock starts with the loop
        assert run.waiting.wait(120), "".join(run.lines)
        with launch(link=link, physics=(), faults=("overload:6@1.0",)) as sim:
            summary, servos = run.finish(sim)
    finally:
        run.kill()
    assert (run.proc.returncode, summary["exit_reason"]) == (4, "servo_error"), summary["message"]
    assert "gripper (id 6)" in summary["message"] and "overload" in summary["message"]
    assert summary["cycles"] > 0 and summary["torque_off"] == [1, 2, 3, 4, 5, 6]
    assert all(s["torque"] == 0 for s in servos)


def test_decimated_scene_keeps_the_model_s_masses_and_inertias():
    mujoco = import_mujoco()
    stock = mujoco.MjModel.from_xml_path(str(model_dir() / "so101.xml"))
    ours = mujoco.MjModel.from_xml_path(str(SCENE))
    assert ours.nmeshface < stock.nmeshface / 5
    ids = [ours.body(stock.body(i).name).id for i in range(stock.nbody)]
    assert np.array_equal(stock.body_mass, ours.body_mass[ids])
    assert np.array_equal(stock.body_inertia, ours.body_inertia[ids])
    assert np.array_equal(stock.actuator_gainprm, ours.actuator_gainprm)


def test_decimation_is_deterministic_and_keeps_the_shape(tmp_path):
    source = model_dir() / "assets" / "upper_arm_so101_v1.stl"
    faces = [decimate_file(source, tmp_path / f"{i}.stl") for i in range(2)]
    assert (tmp_path / "0.stl").read_bytes() == (tmp_path / "1.stl").read_bytes()
    before, after = faces[0]
    assert after < before / 3
    stock, reduced = read_stl(source).reshape(-1, 3), read_stl(tmp_path / "0.stl").reshape(-1, 3)
    assert np.abs(stock.min(0) - reduced.min(0)).max() < 0.002
    assert np.abs(stock.max(0) - reduced.max(0)).max() < 0.002


def test_model_cache_refuses_a_wheel_or_file_that_is_not_the_pinned_one(tmp_path):
    fake = tmp_path / WHEEL
    fake.write_bytes(b"not the wheel")
    with pytest.raises(UserError, match="is not the pinned"):
        ensure_model(tmp_path / "a", wheel=fake)
    assert not model_dir(tmp_path / "a").exists()
    copy = model_dir(tmp_path / "b")
    shutil.copytree(model_dir(), copy)
    (copy / "so101.xml").write_text((copy / "so101.xml").read_text().replace("998.22", "9982.2"))
    with pytest.raises(UserError, match="so101.xml: missing or not the pinned file"):
        ensure_model(tmp_path / "b")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scene", "kitchen"], "unknown scene"),
        (["--ids", "1,2,3"], "give six --ids"),
    ],
)
def test_bad_physics_arguments_exit_2_naming_the_value(argv, message, tmp_path):
    cmd = [sys.executable, "-m", "rynn_edge.runtime.sim", "--physics", "--link", str(tmp_path / "tty"), *argv]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "tty").exists()


def test_a_sim_camera_without_a_twin_is_refused_naming_the_path(tmp_path):
    with pytest.raises(UserError, match=r"no rendered view at .*tty.frames/front.rgb"):
        Camera("front", f"sim:{tmp_path / 'tty'}")


def test_twin_clock_follows_the_realtime_factor_and_slips_only_after_long_stalls():
    twin = Twin(SCENE, 10.0, realtime_factor=2.0)
    twin.advance(10.5)
    assert abs(twin.data.time - 1.0) <= twin.dt
    twin.advance(10.8)  # a 0.3 s stall: caught up
    assert abs(twin.data.time - 1.6) <= twin.dt
    twin.advance(12.0)  # a 1.2 s stall: beyond MAX_LAG_S, the backlog is dropped
    assert twin.data.time < 1.7
    stats = twin.stats(12.0)
    assert stats["max_lag_ms"] >= 1200 - 5 and stats["realtime_factor"] < 1.0


def test_gif_marks_goal_present_and_chunk_switches(tmp_path):
    frames = [(t * 100, np.full((240, 320, 3), 60 + 20 * t, np.uint8)) for t in range(1, 5)]
    steps = [
        {"deadline_ns": t * 100 - 50, "chunk_id": chunk, "goal_raw": [2048] * 6, "present_raw": [1024] * 6}
        for t, chunk in zip(range(1, 5), (0, 0, 1, 1), strict=True)
    ]
    gif = tmp_path / "front.gif"
    assert write_gif(frames, steps, gif) == 4
    with Image.open(gif) as im:
        pictures = []
        for i in range(im.n_frames):
            im.seek(i)
            pictures.append(np.asarray(im.convert("RGB")).astype(int))
    assert len(pictures) == 4 and pictures[0].shape == (240, 320 + 170, 3)
    border = [bool((np.abs(p[120, 1] - (230, 40, 40)) < 30).all()) for p in pictures]
    assert border == [False, False, True, False]  # the frame where chunk 1 takes over
    # goal (blue tick) at 2048 and present (white dot) at 1024 on the first joint's bar
    row, left, right = 240 // 7, 320 + 44, 320 + 170 - 8
    assert (pictures[0][row, left + (right - left) // 2] == (80, 160, 255)).all()
    assert (pictures[0][row, round(left + (right - left) * 1024 / 4095)] > 240).all()
