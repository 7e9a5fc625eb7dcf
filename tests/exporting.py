"""Exporting tiny bundles in tests: a calibration folder and one `rynn-edge export` call."""

from __future__ import annotations

import json
from pathlib import Path

from rynn_edge.runtime.cli import main


def calibration_folder(folder: Path, frames: list[Path], state: list[float]) -> Path:
    folder.mkdir()
    rows = [
        {"images": [str(frames[0]), str(frames[1])], "state": state, "instruction": "pick up the cube"},
        {"images": [str(frames[2]), str(frames[3])], "state": state, "instruction": "open the drawer"},
        {"images": [str(frames[1]), str(frames[2])], "state": state, "instruction": "pick up the cube"},
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def export_bundle(bundle: dict, out: Path, calib: Path, *extra: str) -> int:
    return main(
        [
            "export",
            str(bundle["model"]),
            "--tokenizer",
            str(bundle["tokenizer"]),
            "--vq",
            str(bundle["vq"]),
            "-o",
            str(out),
            "--calibration-data",
            str(calib),
            *extra,
        ]
    )
