"""Headless rendering of the twin's cameras (front, wrist) into shared frame files at the camera rate.

EGL (Mesa's llvmpipe on a machine without a GPU) by default; MUJOCO_GL=osmesa selects OSMesa.
"""

from __future__ import annotations

import contextlib
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
    """Renders every camera of the twin at `fps` (simulated time) into `folder/NAME.rgb`."""

    def __init__(self, twin: Twin, folder: Path, fps: float, size: tuple[int, int] = CAMERA_SIZE) -> None:
        width, height = size
        self.twin, self.period = twin, 1.0 / fps
        self.renderer = renderer(twin, height, width)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.writers = {name: FrameWriter(folder / f"{name}.rgb", height, width) for name in CAMERAS}
        self.next_s = 0.0
        self.frames = 0
        self.render_s = 0.0

    def due(self) -> bool:
        return self.twin.data.time >= self.next_s

    def render(self) -> None:
        """One frame of every camera from the current state, stamped with the simulated time."""
        sim_time = self.twin.data.time
        for name, camera in CAMERAS.items():
            started = time.perf_counter()
            self.renderer.update_scene(self.twin.data, camera=camera)
            image = self.renderer.render()
            spent = time.perf_counter() - started
            self.writers[name].publish(image, sim_time, spent)
            self.render_s += spent
        self.frames += 1
        self.next_s = max(self.next_s + self.period, sim_time)

    def stats(self) -> dict[str, float]:
        per_frame = self.render_s / self.frames if self.frames else 0.0
        return {"frames": self.frames, "render_ms_per_frame": round(per_frame * 1000, 2)}

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.renderer.close()
        with contextlib.suppress(OSError):
            self.folder.rmdir()
