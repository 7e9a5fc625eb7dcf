"""Headless rendering of the twin's cameras (front, wrist), in a process of its own.

The simulator publishes the joint state (qpos and simulated time) to a shared slot after every physics
step; the render process copies it at the camera rate (simulated time), renders both views from its own
copy of the scene and publishes them as frame slots beside the bus link (frames.frames_dir). In its own
process the 5-30 ms a frame pair takes never delays a bus reply (the host times out after 5 ms), never
holds the simulator's GIL, and does not inherit its SCHED_FIFO priority.

EGL (Mesa's llvmpipe on a machine without a GPU) by default; MUJOCO_GL=osmesa selects OSMesa.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim.frames import SlotReader, SlotWriter
from rynn_edge.runtime.sim.physics import GL_LIBRARIES, Twin, import_mujoco
from rynn_edge.runtime.sim.scene import CAMERA_SIZE

# camera name on the run's side -> camera in the scene
CAMERAS = {"front": "front", "wrist": "wrist_cam"}
POSE = "pose.f64"
START_TIMEOUT_S = 30.0


def renderer(mujoco, model, height: int, width: int):
    """A MuJoCo offscreen renderer with shadows off, or a clear error naming the system libraries."""
    try:
        r = mujoco.Renderer(model, height, width)
    except Exception as err:  # the GL platform's own error types differ (EGL, OSMesa, GLFW)
        raise UserError(f"the twin's cameras cannot render headless ({err}); {GL_LIBRARIES}") from None
    r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return r


def serve(scene_xml: Path, folder: Path, fps: float, size: tuple[int, int] = CAMERA_SIZE) -> None:
    """The render process: runs until its stdin closes (the simulator ended)."""
    mujoco = import_mujoco()
    model = mujoco.MjModel.from_xml_path(str(scene_xml))
    view = mujoco.MjData(model)
    width, height = size
    r = renderer(mujoco, model, height, width)
    pose = SlotReader(folder / POSE)
    writers = {name: SlotWriter(folder / f"{name}.rgb", (height, width, 3), "|u1") for name in CAMERAS}
    period, next_s = 1.0 / fps, 0.0
    try:
        while True:
            readable, _, _ = select.select([0], [], [], period / 4)
            if readable and not os.read(0, 512):
                return
            snap = pose.latest()
            if snap is None or snap.sim_time_s < next_s:
                continue
            view.qpos[:] = snap.data
            view.time = snap.sim_time_s
            mujoco.mj_kinematics(model, view)
            mujoco.mj_camlight(model, view)
            for name, camera in CAMERAS.items():
                started = time.perf_counter()
                r.update_scene(view, camera=camera)
                writers[name].publish(r.render(), snap.sim_time_s, time.perf_counter() - started)
            next_s = max(next_s + period, snap.sim_time_s)
    finally:
        for writer in writers.values():
            writer.close()
        pose.close()
        r.close()


class RenderProcess:
    """The simulator's side: publishes the twin's pose, runs `serve` in a child, reports its render times."""

    def __init__(self, twin: Twin, scene_xml: Path, folder: Path, fps: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        twin.pose = self.pose = SlotWriter(folder / POSE, (twin.model.nq,), "<f8")
        twin.publish_pose()
        self.log = folder / "render.log"
        cmd = [sys.executable, "-m", "rynn_edge.runtime.sim.render", str(scene_xml), str(folder), str(fps)]
        with open(self.log, "w") as log:
            # stdin is a pipe only the simulator holds: the renderer ends with it, however it ends
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=log)
        self.readers: dict[str, SlotReader] = {}
        try:
            self._wait_first_frames()
        except BaseException:
            self.close()
            raise

    def _wait_first_frames(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.readers) < len(CAMERAS) or any(r.latest() is None for r in self.readers.values()):
            if self.proc.poll() is not None:
                said = self.log.read_text().strip()
                raise UserError(said.rpartition("error: ")[2] or f"the twin's renderer exited: {said}")
            if time.monotonic() > deadline:
                raise UserError(f"the twin's renderer gave no frame in {START_TIMEOUT_S:g} s ({self.log})")
            for name in CAMERAS:
                with contextlib.suppress(OSError, ValueError):
                    self.readers.setdefault(name, SlotReader(self.folder / f"{name}.rgb"))
            time.sleep(0.01)

    def stats(self) -> dict[str, float]:
        """Frames rendered so far and the last frame pair's render time."""
        snaps = [r.latest() for r in self.readers.values()]
        return {
            "frames": min(s.seq for s in snaps if s) if all(snaps) else 0,
            "render_ms": round(sum(s.cost_s for s in snaps if s) * 1000, 2),
        }

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self.readers.values():
            reader.close()
        self.pose.close()
        self.log.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rynn_edge.runtime.sim.render", description=__doc__)
    parser.add_argument("scene_xml", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("fps", type=float)
    args = parser.parse_args(argv)
    try:
        serve(args.scene_xml, args.folder, args.fps)
    except UserError as err:
        print(f"rynn-edge sim: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
