"""Cameras: each on its own thread, keeping only the latest RGB frame and its capture time.

SOURCE forms (`--camera NAME=SOURCE`):
  0, 2, ...           OpenCV device index
  /dev/video0         device path
  rtsp://..., http:// network stream
  clip.mp4            a video file, played at its own frame rate and looped (dry runs)
  synthetic           a deterministic moving pattern at 30 fps, no hardware
  synthetic:SECONDS   the same, but the camera goes dead after SECONDS (to rehearse a lost camera)
  sim, sim:PORT       the view of the same name rendered by the physics twin (`rynn-edge sim --physics`)
                      serving PORT (default the simulator's default link), read from shared memory

Resizing to the model's input is the policy's job (the core's images module), not done here.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim.cli import DEFAULT_LINK
from rynn_edge.runtime.sim.frames import SlotReader, frames_dir

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # HxWx3 uint8 RGB
    t_ns: int  # time.monotonic_ns() at capture
    seq: int


def synthetic_frame(seq: int, height: int = 240, width: int = 320, *, seed: int = 0) -> np.ndarray:
    """Frame `seq` of the synthetic source: a gradient with a bright square sweeping across it."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (x * 255 // max(1, width - 1) + 7 * seed) % 256
    image[..., 1] = (y * 255 // max(1, height - 1) + 3 * seq) % 256
    image[..., 2] = (seq * 5 + 40 * seed) % 256
    side = height // 4
    cx = (seq * 4) % (width - side)
    cy = int((height - side) / 2 * (1 + np.sin(seq / 15)))
    image[cy : cy + side, cx : cx + side] = 255
    return image


class Camera:
    """A capture thread. `latest()` never blocks on the device; `error` says why it stopped."""

    def __init__(self, name: str, source: str, fps: float = 30.0):
        self.name = name
        self.source = source
        self.fps = fps
        self.error: str | None = None
        self.render_s: list[float] = []  # sim: the twin's render time of each frame read
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        kind, _, arg = self.source.partition(":")
        self._dead_after_s: float | None = None
        self._cap = None
        self._shared: SlotReader | None = None
        if kind == "sim":
            self._shared = _sim_frames(self.name, arg or DEFAULT_LINK)
            return
        if kind == "synthetic":
            self._dead_after_s = _synthetic_seconds(self.name, self.source)
            return
        _check_exists(self.name, self.source)
        cv2 = _opencv(self.name)

        target: int | str = int(self.source) if self.source.isdigit() else self.source
        looks_like_file = _is_video_file(self.source)
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise UserError(
                f"camera {self.name}: cannot open {self.source!r} (device index, path, URL or video)"
            )
        self._loop_file = looks_like_file
        if looks_like_file:
            self.fps = self._cap.get(cv2.CAP_PROP_FPS) or self.fps

    def _run(self) -> None:
        try:
            if self._shared is not None:
                self._run_sim()
            elif self._cap is None:
                self._run_synthetic()
            else:
                self._run_opencv()
        except Exception as err:  # the thread must report, never die silently
            self.error = f"{type(err).__name__}: {err}"
        finally:
            if self._cap is not None:
                self._cap.release()
            if self._shared is not None:
                self._shared.close()
            with self._cond:
                self._cond.notify_all()

    def _publish(self, image: np.ndarray, seq: int) -> None:
        with self._cond:
            self._frame = Frame(image, time.monotonic_ns(), seq)
            self._cond.notify_all()

    def _run_synthetic(self) -> None:
        start = time.monotonic()
        seed = sum(self.name.encode())
        seq = 0
        while not self._stop.is_set():
            if self._dead_after_s is not None and time.monotonic() - start >= self._dead_after_s:
                self.error = f"synthetic source went dead after {self._dead_after_s:g} s (as asked)"
                return
            self._publish(synthetic_frame(seq, seed=seed), seq)
            seq += 1
            self._stop.wait(max(0.0, start + seq / self.fps - time.monotonic()))

    def _run_sim(self) -> None:
        """Poll the twin's frame at twice the camera rate and publish each new one."""
        last = -1
        while not self._stop.wait(1.0 / self.fps / 2):
            frame = self._shared.latest()
            if frame is not None and frame.seq != last:
                last = frame.seq
                self.render_s.append(frame.cost_s)
                self._publish(frame.data, frame.seq)

    def _run_opencv(self) -> None:
        import cv2

        start = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            if not ok and self._loop_file:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self._cap.read()
            if not ok:
                self.error = f"no frame from {self.source!r} (unplugged or stream ended)"
                return
            self._publish(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seq)
            seq += 1
            if self._loop_file:  # devices pace themselves; a file must be paced to its frame rate
                self._stop.wait(max(0.0, start + seq / self.fps - time.monotonic()))

    def latest(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_first(self, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._frame is None and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._frame is None:
                raise UserError(
                    f"camera {self.name} ({self.source}): no frame within {timeout_s:g} s"
                    + (f": {self.error}" if self.error else "")
                )
            return self._frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def parse_camera_specs(specs: list[str], check_sources: bool = True) -> list[tuple[str, str]]:
    """`NAME=SOURCE` strings -> [(name, source)], in the order given (= prompt order). With
    `check_sources` off (doctor), a missing file or device is left for the probe to report as a row."""
    out = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise UserError(f"--camera {spec!r}: expected NAME=SOURCE, e.g. front=0 or wrist=synthetic")
        if name in {n for n, _ in out}:
            raise UserError(f"--camera {name} given twice")
        kind, _, arg = source.partition(":")
        if kind == "synthetic":
            _synthetic_seconds(name, source)
        elif kind != "sim" and check_sources:
            _check_exists(name, source)
            _opencv(name)
        out.append((name, source))
    return out


def _is_video_file(source: str) -> bool:
    return "://" not in source and Path(source).suffix.lower() in VIDEO_SUFFIXES


def _check_exists(name: str, source: str) -> None:
    """A video file or device path that is not there is named first (before any need for OpenCV)."""
    if _is_video_file(source) and not Path(source).is_file():
        raise UserError(f"camera {name}: video file {source} does not exist")
    if source.startswith("/dev/") and not Path(source).exists():
        raise UserError(f"camera {name}: device {source} does not exist (is the camera plugged in?)")


def _synthetic_seconds(name: str, source: str) -> float | None:
    """`synthetic` -> None (never dies), `synthetic:SECONDS` -> SECONDS."""
    _, sep, arg = source.partition(":")
    if not sep:
        return None
    try:
        seconds = float(arg)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(
            f"--camera {name}={source}: expected synthetic or synthetic:SECONDS with SECONDS > 0, got {arg!r}"
        )
    return seconds


def _sim_frames(name: str, link: str) -> SlotReader:
    path = frames_dir(link) / f"{name}.rgb"
    try:
        return SlotReader(path)
    except (OSError, ValueError) as err:
        raise UserError(
            f"camera {name}=sim: no rendered view at {path} ({err}); start `rynn-edge sim --physics "
            f"--link {link}` first (views: front, wrist)"
        ) from None


def _opencv(name: str):
    try:
        import cv2
    except ImportError:
        raise UserError(
            f"--camera {name}: real cameras and video files need OpenCV: pip install 'rynn-edge[camera]'"
        ) from None
    return cv2
