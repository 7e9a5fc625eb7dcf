"""Cameras: synthetic and video-file sources on their own threads, latest frame + timestamp."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.cameras import Camera, parse_camera_specs, synthetic_frame


def test_synthetic_is_deterministic_and_moving():
    assert np.array_equal(synthetic_frame(7, seed=1), synthetic_frame(7, seed=1))
    assert not np.array_equal(synthetic_frame(7), synthetic_frame(8))
    assert synthetic_frame(0).shape == (240, 320, 3) and synthetic_frame(0).dtype == np.uint8


def test_synthetic_camera_keeps_latest_frame_with_timestamp():
    cam = Camera("front", "synthetic", fps=50)
    try:
        first = cam.wait_first(2.0)
        time.sleep(0.2)
        later = cam.latest()
        assert later.seq > first.seq and later.t_ns > first.t_ns
        assert np.array_equal(later.image, synthetic_frame(later.seq, seed=sum(b"front")))
        assert time.monotonic_ns() - later.t_ns < 100_000_000
    finally:
        cam.close()


def test_synthetic_camera_can_go_dead_on_purpose():
    cam = Camera("wrist", "synthetic:0.2")
    try:
        cam.wait_first(2.0)
        time.sleep(0.4)
        assert cam.error and "dead" in cam.error
        assert time.monotonic_ns() - cam.latest().t_ns > 100_000_000
    finally:
        cam.close()


def test_video_file_plays_at_its_rate_and_loops(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 40.0, (320, 240))
    for i in range(4):
        writer.write(cv2.cvtColor(synthetic_frame(i * 10), cv2.COLOR_RGB2BGR))
    writer.release()
    cam = Camera("front", str(path))
    try:
        first = cam.wait_first(2.0)
        assert first.image.shape == (240, 320, 3)
        # RGB order: the first frame's red channel is the horizontal gradient (JPEG: approximately)
        assert abs(int(first.image[120, 300, 0]) - int(synthetic_frame(0)[120, 300, 0])) < 12
        time.sleep(0.3)  # 4 frames at 40 fps last 0.1 s: it must have looped
        assert cam.error is None and cam.latest().seq >= 8
    finally:
        cam.close()


def test_bad_sources_and_specs():
    with pytest.raises(UserError, match="does not exist"):
        Camera("front", "/nonexistent/clip.mp4")
    assert parse_camera_specs(["front=0", "wrist=synthetic"]) == [("front", "0"), ("wrist", "synthetic")]
    with pytest.raises(UserError, match="NAME=SOURCE"):
        parse_camera_specs(["front"])
    with pytest.raises(UserError, match="twice"):
        parse_camera_specs(["a=0", "a=1"])
