"""Scenes of the physics twin, built from the cached SO101 model by our own code (deterministic).

The arm's bodies, joints, actuators, collision shapes and inertias are the model's, untouched. We add
a table, a cube, a target, lights and a front camera, point the mesh folder at visual meshes decimated
on a 2 mm grid (mesh_decimate), and turn off shadows and anti-aliasing: two 320x240 cameras at 30 Hz
must fit beside the physics on a 2-core machine.

The model is an SO101 (the SO100's successor: same STS3215 servos, same joint names and order, a
re-routed wrist and a longer forearm). An SO100 calibration maps onto it joint by joint: ticks = 2048 +
rad x 4096 / 2pi, where 0 rad is the middle of each joint's range as LeRobot's SO101 calibration
defines it; the reach and the camera view differ by a few centimetres from a real SO100.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim.mesh_decimate import decimate_file
from rynn_edge.runtime.sim.model_cache import ensure_model, sha256

GRID_M = 0.002
BUILD_VERSION = 1  # bump when the generated scene changes, so caches are rebuilt
CAMERA_SIZE = (320, 240)  # width, height of the rendered views
TABLE_HALF = (0.45, 0.6, 0.02)  # m; the table top is z = 0, the arm's base stands on it at the origin
CUBE_HALF = 0.015
# name -> (camera position, point it looks at, vertical field of view in degrees)
FRONT_CAMERA = ((0.55, 0.0, 0.38), (0.18, 0.0, 0.05), 55.0)


def _look_at(pos: tuple[float, ...], target: tuple[float, ...]) -> str:
    """MuJoCo xyaxes for a camera at `pos` looking at `target`, image up toward +z."""
    forward = [t - p for t, p in zip(target, pos, strict=True)]
    norm = math.sqrt(sum(c * c for c in forward))
    f = [c / norm for c in forward]
    x = [f[1], -f[0], 0.0]  # right = forward x up
    n = math.hypot(x[0], x[1])
    x = [c / n for c in x]
    y = [x[1] * f[2] - x[2] * f[1], x[2] * f[0] - x[0] * f[2], x[0] * f[1] - x[1] * f[0]]
    return " ".join(f"{c:.6f}" for c in (*x, *y))


def _scene_table(world: ET.Element) -> None:
    """A table, a red cube in reach in front of the arm, a green target disc beside it."""
    ET.SubElement(world, "light", name="key", pos="0.3 -0.3 1.2", dir="-0.2 0.2 -1", directional="true")
    ET.SubElement(world, "light", name="fill", pos="-0.4 0.4 1.0", dir="0.3 -0.3 -1", diffuse="0.3 0.3 0.3")
    ET.SubElement(
        world, "geom", name="floor", type="plane", size="0 0 0.05", pos="0 0 -0.75", rgba="0.35 0.35 0.38 1"
    )
    ET.SubElement(
        world,
        "geom",
        name="table",
        type="box",
        size=" ".join(map(str, TABLE_HALF)),
        pos=f"0.25 0 {-TABLE_HALF[2]}",
        rgba="0.72 0.6 0.45 1",
        friction="1 0.005 0.0001",
    )
    cube = ET.SubElement(world, "body", name="cube", pos=f"0.22 0.08 {CUBE_HALF}")
    ET.SubElement(cube, "freejoint", name="cube")
    ET.SubElement(
        cube, "geom", name="cube", type="box", size=f"{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}", mass="0.03",
        rgba="0.85 0.1 0.1 1", condim="4", friction="1 0.005 0.0001",
    )  # fmt: skip
    ET.SubElement(
        world, "geom", name="target", type="cylinder", size="0.035 0.0005", pos="0.22 -0.1 0.0005",
        contype="0", conaffinity="0", rgba="0.1 0.7 0.2 1",
    )  # fmt: skip
    pos, target, fovy = FRONT_CAMERA
    place = {"pos": " ".join(map(str, pos)), "xyaxes": _look_at(pos, target), "fovy": str(fovy)}
    ET.SubElement(world, "camera", name="front", **place)


SCENES = {"table": _scene_table}


def _visual_only_meshes(root: ET.Element) -> set[str]:
    """Mesh names used only by visual geoms without their own mass (safe to simplify)."""
    visual, other = set(), set()
    for geom in root.iter("geom"):
        mesh = geom.get("mesh")
        if mesh:
            (visual if geom.get("class") == "visual" and "mass" not in geom.attrib else other).add(mesh)
    return visual - other


def _mesh_name(mesh: ET.Element) -> str:
    return mesh.get("name") or Path(mesh.get("file", "")).stem


def build_scene(name: str = "table", root: Path | None = None) -> Path:
    """The scene XML for `name` (built and cached on first use): the SO101 plus the scene's objects."""
    if name not in SCENES:
        raise UserError(f"--scene {name!r}: unknown scene; one of {', '.join(SCENES)}")
    model = ensure_model(root)
    source = ET.parse(model / "so101.xml").getroot()
    recipe = f"{BUILD_VERSION}/{name}/{GRID_M}/{sha256(model / 'so101.xml')}"
    key = hashlib.sha256(recipe.encode()).hexdigest()
    out = model.parent / f"scene-{name}-{key[:12]}"
    xml_path = out / f"{name}.xml"
    if xml_path.is_file():
        return xml_path
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "meshes").mkdir(parents=True)
    simplify = _visual_only_meshes(source)
    for mesh in source.iter("mesh"):
        stl = mesh.get("file")
        if stl is None:
            continue
        src, dst = model / "assets" / stl, staging / "meshes" / stl
        if _mesh_name(mesh) in simplify:
            decimate_file(src, dst, GRID_M)
        else:
            shutil.copyfile(src, dst)
    source.find("compiler").set("meshdir", "meshes")
    visual = source.find("visual")
    ET.SubElement(visual, "global", offwidth="640", offheight="480")
    ET.SubElement(visual, "quality", shadowsize="0", offsamples="0")
    ET.SubElement(visual, "headlight", diffuse="0.45 0.45 0.45", ambient="0.25 0.25 0.25", specular="0 0 0")
    source.find("worldbody/body").set("name", "base")
    SCENES[name](source.find("worldbody"))
    ET.indent(source)
    ET.ElementTree(source).write(staging / f"{name}.xml", encoding="unicode")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return xml_path


if __name__ == "__main__":
    try:
        for scene in SCENES:
            print(f"physics twin scene {scene}: {build_scene(scene)}")
    except UserError as err:
        print(f"rynn-edge: error: {err}", file=sys.stderr)
        sys.exit(2)
