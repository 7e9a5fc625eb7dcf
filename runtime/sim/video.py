"""A GIF of the twin's front view during a run, with each joint's goal and present position beside it
and every chunk switch marked (a red frame border and the new chunk's id)."""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rynn_edge.runtime.sim.frames import SlotReader

PANEL_W = 170
GIF_FPS = 10
JOINT_LABELS = ("pan", "lift", "elbow", "flex", "roll", "grip")


class FrameRecorder:
    """Keeps every new frame of one twin camera at up to `fps`, stamped with time.monotonic_ns()."""

    def __init__(self, path: Path, fps: float = GIF_FPS) -> None:
        self.reader = SlotReader(path)
        self.period = 1.0 / fps
        self.frames: list[tuple[int, np.ndarray]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(self.period):
            frame = self.reader.latest()
            if frame is not None and frame.seq != last:
                last = frame.seq
                self.frames.append((time.monotonic_ns(), frame.data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.reader.close()


def _panel(draw: ImageDraw.ImageDraw, x0: int, height: int, goal: list[int], present: list[int]) -> None:
    """One bar per joint over 0..4095 ticks: goal a blue tick, present a white dot."""
    row = height // (len(JOINT_LABELS) + 1)
    for j, label in enumerate(JOINT_LABELS):
        y = row * (j + 1)
        left, right = x0 + 44, x0 + PANEL_W - 8
        draw.text((x0 + 4, y - 6), label, fill=(220, 220, 220))
        draw.line((left, y, right, y), fill=(90, 90, 90), width=3)
        gx = left + (right - left) * goal[j] / 4095
        px = left + (right - left) * present[j] / 4095
        draw.line((gx, y - 7, gx, y + 7), fill=(80, 160, 255), width=3)
        draw.ellipse((px - 4, y - 4, px + 4, y + 4), fill=(255, 255, 255))
    draw.text((x0 + 4, height - 14), "| goal  o present", fill=(160, 160, 160))


def write_gif(frames: list[tuple[int, np.ndarray]], steps: list[dict], path: Path) -> int:
    """Annotate `frames` [(t_ns, image)] with the loop's step records (episode log `step` records:
    deadline_ns, chunk_id, goal_raw, present_raw) current at each frame; returns the frames written."""
    steps = [s for s in steps if s.get("goal_raw")]
    if not frames or not steps:
        return 0
    times = [s["deadline_ns"] for s in steps]
    images, last_chunk = [], None
    for t_ns, image in frames:
        i = bisect.bisect_right(times, t_ns) - 1
        if i < 0:
            continue
        step = steps[i]
        h, w, _ = image.shape
        canvas = Image.new("RGB", (w + PANEL_W, h), (30, 30, 34))
        canvas.paste(Image.fromarray(image), (0, 0))
        draw = ImageDraw.Draw(canvas)
        _panel(draw, w, h, step["goal_raw"], step["present_raw"])
        chunk = step["chunk_id"]
        switched = last_chunk is not None and chunk != last_chunk
        draw.text((6, 4), f"chunk {chunk}" + ("  switch" if switched else ""), fill=(255, 255, 255))
        if switched:
            draw.rectangle((0, 0, w - 1, h - 1), outline=(230, 40, 40), width=4)
        last_chunk = chunk
        images.append(canvas)
    if images:
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // GIF_FPS, loop=0)
    return len(images)
