"""ONNX -> TensorRT engine with NVIDIA's builder API (TensorRT 10.x and 11.x; TensorRT-RTX for CI).

Strongly typed networks only: precisions come from the graph's Q/DQ nodes and float types (TensorRT 11
removed the FP16/INT8 builder flags and implicit calibration). One optimization profile per engine
from the manifest's min/opt/max shapes, a timing cache shared by all stages of an export (and reused
by later exports), detailed profiling verbosity so the per-layer profiler sees real layer names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

INSTALL_HINT = (
    "TensorRT is not installed, so the export stopped after writing ONNX graphs (they run with "
    "--backend onnxruntime). To build engines, run the export on the target machine with TensorRT: "
    "JetPack's python3-libnvinfer on a Jetson, or `pip install tensorrt-cu13` (or tensorrt-cu12, "
    "matching your CUDA) on a desktop GPU, then re-run with --target tensorrt."
)

# shapes per input: (min, opt, max)
Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def load_tensorrt() -> ModuleType | None:
    """The full TensorRT builder module, or None where it is not installed (or has no libraries)."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return tensorrt


BUILD_HINT = (
    "no TensorRT builder is installed here. On a Jetson: JetPack's python3-libnvinfer (sudo apt install "
    "python3-libnvinfer); on a desktop GPU: pip install tensorrt-cu13 (or tensorrt-cu12, matching your "
    "CUDA); for RTX GPUs (also builds ahead of time without a GPU): pip install tensorrt-rtx-cu13-libs "
    "tensorrt-rtx-cu13-bindings"
)
BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")


def load_builder(kind: str = "auto") -> ModuleType | None:
    """TensorRT (preferred under `auto`), or TensorRT-RTX, or None where neither imports."""
    if kind in ("auto", "tensorrt"):
        trt = load_tensorrt()
        if trt is not None:
            return trt
    if kind in ("auto", "tensorrt-rtx"):
        try:
            import tensorrt_rtx_bindings
        except (ImportError, OSError):
            return None
        return tensorrt_rtx_bindings
    return None


def _logger(trt: ModuleType) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def _network_flags(trt: ModuleType) -> int:
    # TRT 10 needs STRONGLY_TYPED explicitly; TRT 11 networks are always strongly typed.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _progress_monitor(trt: ModuleType, label: str) -> Any | None:
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=f"{label}: {phase_name}", leave=False, disable=None
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            self.bars[phase_name].update(1)
            return True

        def phase_finish(self, phase_name: str) -> None:
            self.bars.pop(phase_name).close()

    return Monitor()


def parse(trt: ModuleType, onnx_path: Path) -> tuple[Any, Any, Any]:
    """(builder, network, parser) with the graph parsed; raises naming the parser errors."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors[:5]))
    return builder, network, parser


def build_engine(
    trt: ModuleType,
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    *,
    timing_cache: Path | None = None,
    hardware_compatible: bool = False,
    version_compatible: bool = False,
    compute_capability: str | None = None,
) -> dict[str, Any]:
    """Build and write one engine; returns what the manifest records about it."""
    builder, network, _parser = parse(trt, onnx_path)
    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in profile:
            opt_profile.set_shape(tensor.name, *profile[tensor.name])
    config.add_optimization_profile(opt_profile)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if compute_capability is not None:  # TensorRT-RTX ahead-of-time build for a named GPU family
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, compute_capability), 0)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    monitor = _progress_monitor(trt, onnx_path.stem)
    if monitor is not None:
        config.progress_monitor = monitor
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    engine_path.write_bytes(bytes(plan))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "engine": engine_path.name,
        "tensorrt_version": trt.__version__,
        "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
        "layers": network.num_layers,
    }
