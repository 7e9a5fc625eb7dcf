"""Headless rendering of the twin's cameras (front, wrist) into shared frame files at the camera rate.

EGL (Mesa's llvmpipe on a machine without a GPU) by default; MUJOCO_GL=osmesa selects OSMesa.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim.frames import FrameWriter
from rynn_edge.runtime.sim.physics import Twin
from rynn_edge.runtime.sim.scene import CAMERA_SIZE

# camera name on the bus side -> camera in the scene
CAMERAS = {"front": "front", "wrist": "wrist_cam"}
GL_LIBRARIES = (
    "EGL: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri; "
    "or OSMesa: apt-get install libosmesa6 and set MUJOCO_GL=osmesa"
)


def renderer(twin: Twin, height: int, width: int):
    """A MuJoCo offscreen renderer with shadows off, or a clear error naming the system libraries."""
    mujoco = twin.mujoco
    try:
        r = mujoco.Renderer(twin.model, height, width)
    except Exception as err:  # the GL platform's own error types differ (EGL, OSMesa, GLFW)
        raise UserError(f"the twin's cameras cannot render headless ({err}); {GL_LIBRARIES}") from None
    r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return r


class CameraRig:
    """Renders every camera of the twin at `fps` (simulated time) into `folder/NAME.rgb`, on its own thread.

    MuJoCo releases the GIL while it renders, so the bus loop keeps answering within microseconds while a
    frame is drawn (in the loop itself, a 5-15 ms render would time out the host's 5 ms bus reads). The
    thread copies the joint state under the twin's lock and renders from its own copy.
    """

    def __init__(self, twin: Twin, folder: Path, fps: float, size: tuple[int, int] = CAMERA_SIZE) -> None:
        self.twin, self.period, self.size = twin, 1.0 / fps, size
        self.view = twin.mujoco.MjData(twin.model)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        width, height = size
        self.writers = {name: FrameWriter(folder / f"{name}.rgb", height, width) for name in CAMERAS}
        self.frames = 0
        self.render_s = 0.0
        self.error: UserError | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-cameras", daemon=True)
        self._thread.start()
        self._first.wait()
        if self.error is not None:
            self.close()
            raise self.error

    def _run(self) -> None:
        width, height = self.size
        try:
            r = renderer(self.twin, height, width)  # the GL context belongs to this thread
        except UserError as err:
            self.error = err
            self._first.set()
            return
        next_s = 0.0
        try:
            while not self._stop.is_set():
                if self.twin.data.time < next_s:
                    self._stop.wait(self.period / 4)
                    continue
                self._render(r)
                self._first.set()
                next_s = max(next_s + self.period, self.view.time)
        finally:
            r.close()

    def _render(self, r) -> None:
        """One frame of every camera from a copy of the current state, stamped with its simulated time."""
        mujoco = self.twin.mujoco
        with self.twin.lock:
            self.view.qpos[:] = self.twin.data.qpos
            self.view.time = self.twin.data.time
        mujoco.mj_kinematics(self.twin.model, self.view)
        mujoco.mj_camlight(self.twin.model, self.view)
        for name, camera in CAMERAS.items():
            started = time.perf_counter()
            r.update_scene(self.view, camera=camera)
            image = r.render()
            spent = time.perf_counter() - started
            self.writers[name].publish(image, self.view.time, spent)
            self.render_s += spent
        self.frames += 1

    def stats(self) -> dict[str, float]:
        per_frame = self.render_s / self.frames if self.frames else 0.0
        return {"frames": self.frames, "render_ms_per_frame": round(per_frame * 1000, 2)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        for writer in self.writers.values():
            writer.close()
        with contextlib.suppress(OSError):
            self.folder.rmdir()
