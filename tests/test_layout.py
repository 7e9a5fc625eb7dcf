"""The house rules of the package layout, checked on the import graph built from the source with `ast`.

Every import counts, function-local and type-checking ones included: a cycle or an upward import that
only happens at run time is still one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "rynn_edge.runtime", "export": "rynn_edge.export", "kernels": "rynn_edge.kernels"}
# Lowest first. A module may import its own floor (without cycles) and the floors below, never above.
FLOORS = [
    ["rynn_edge.kernels"],
    ["rynn_edge.runtime.errors", "rynn_edge.runtime.argtypes", "rynn_edge.runtime.__init__"],
    [
        "rynn_edge.runtime.model",
        "rynn_edge.runtime.tokens",
        "rynn_edge.runtime.sim",
        "rynn_edge.runtime.robot.so100",
        "rynn_edge.runtime.robot.calibration",
        "rynn_edge.runtime.robot.embodiment",
    ],
    # serving.wire: the whole-step model's tensors, shared by the exporter, the server and the triton backend
    ["rynn_edge.runtime.decoding", "rynn_edge.runtime.backends", "rynn_edge.runtime.serving.wire"],
    ["rynn_edge.runtime.predictor", "rynn_edge.runtime.world_model", "rynn_edge.runtime.tiny"],
    # serving: the server side (Triton models and process, LeRobot endpoint) runs the predictor
    ["rynn_edge.runtime.robot", "rynn_edge.runtime.bench", "rynn_edge.runtime.serving"],
    ["rynn_edge.runtime.commands", "rynn_edge.export"],
    ["rynn_edge.runtime.cli"],
]
TOP_LEVEL_MODULES = {"__init__", "cli", "errors", "argtypes", "predictor", "world_model", "decoding"}
RUNTIME_FOLDERS = {"model", "tokens", "backends", "robot", "sim", "bench", "tiny", "commands", "serving"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__") if parts[-1] == "__init__" else name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports (a `from package import name` counts as the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rynn_edge"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or ({node.module} & known)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def floor(module: str) -> int:
    best, depth = None, -1
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            hit = module == prefix or module.startswith(prefix + ".") or f"{module}.__init__" == prefix
            if hit and len(prefix) > depth:
                best, depth = level, len(prefix)
    assert best is not None, f"{module} is on no floor of tests/test_layout.py: give it one"
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_from_a_lower_floor_to_a_higher_one() -> None:
    upward = [
        f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if floor(d) > floor(m)
    ]
    assert upward == []


def test_kernels_import_nothing_of_ours_outside_kernels() -> None:
    outside = {
        (m, dep)
        for m, deps in graph().items()
        if m.startswith("rynn_edge.kernels")
        for dep in deps
        if not dep.startswith("rynn_edge.kernels")
    }
    assert outside == set()


def test_runtime_modules_live_in_their_folders() -> None:
    runtime = ROOT / "runtime"
    loose = {p.stem for p in runtime.glob("*.py")} - TOP_LEVEL_MODULES
    folders = {p.name for p in runtime.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert loose == set()
    assert folders == RUNTIME_FOLDERS


def test_building_the_parser_imports_no_torch() -> None:
    """`rynn-edge --help` (and every command's --help) stays instant: no torch, onnx or cv2 behind it."""
    code = (
        "import sys; from rynn_edge.runtime.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'cv2', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
