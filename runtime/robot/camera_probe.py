"""`rynn-edge doctor`'s camera rows: each `--camera NAME=SOURCE` opens and delivers frames, at what size and
measured rate; `--scan` lists the video devices that open (LeRobot's find-cameras)."""

from __future__ import annotations

import glob
import time
from pathlib import Path

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.cameras import Camera
from rynn_edge.runtime.robot.health import FAIL, OK, SKIP, WARN, Row

STILL_IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
FIRST_FRAME_S = 5.0
MEASURE_S = 1.0
MIN_RATE_HZ = 10.0  # below this the policy sees stale images (it queries at a few Hz; frames must be fresher)


def camera_row(
    name: str, source: str, size: tuple[int, int] | None = None, measure_s: float = MEASURE_S
) -> Row:
    """Open `source`, wait for a first frame, count frames for `measure_s`; `size` is (width, height)."""
    check = f"camera {name}"
    try:
        camera = Camera(name, source)
    except UserError as err:
        return Row(check, FAIL, str(err), _open_hint(source))
    try:
        try:
            first = camera.wait_first(FIRST_FRAME_S)
        except UserError as err:
            return Row(check, FAIL, str(err), _open_hint(source))
        time.sleep(measure_s)
        last = camera.latest()
        assert last is not None
        frames = last.seq - first.seq
        rate = frames / ((last.t_ns - first.t_ns) / 1e9) if frames else 0.0
    finally:
        camera.close()
    height, width = last.image.shape[:2]
    found = f"{source}: {width}x{height}, {rate:.1f} frames/s measured over {measure_s:g} s"
    if camera.error:
        return Row(check, FAIL, f"{found}; then {camera.error}", "it stopped: " + _open_hint(source))
    if size is not None and (width, height) != size:
        return Row(
            check,
            WARN,
            f"{found}; {size[0]}x{size[1]} asked",
            "the camera does not deliver the asked size: set it in the camera's driver (v4l2-ctl) or accept "
            "the policy's resize",
        )
    if rate < MIN_RATE_HZ:
        return Row(
            check,
            FAIL,
            found,
            f"under {MIN_RATE_HZ:g} frames/s the policy acts on stale images: check USB bandwidth "
            "(one camera per USB controller), exposure (auto-exposure lowers the rate in dim light)",
        )
    return Row(check, OK, found)


def _open_hint(source: str) -> str:
    if Path(source).suffix.lower() in STILL_IMAGES:
        return "a still image gives one frame: use a video file (played in a loop) or a camera"
    if source.startswith("/dev/video") or source.isdigit():
        return (
            "check the cable and that your user is in the video group (sudo usermod -aG video $USER); "
            "`rynn-edge doctor --scan` lists the devices that open"
        )
    return "check the file path or the stream URL"


def scan_cameras(pattern: str = "/dev/video*", measure_s: float = 0.5) -> list[Row]:
    devices = sorted(glob.glob(pattern))
    if not devices:
        return [Row("scan: cameras", SKIP, f"no {pattern} device")]
    rows = []
    for device in devices:
        row = camera_row(device.rsplit("/", 1)[-1], device, measure_s=measure_s)
        # A UVC camera also shows a metadata node that never opens: not a failure of the scan.
        rows.append(Row(f"scan: {device}", OK if row.verdict != FAIL else SKIP, row.found))
    return rows
