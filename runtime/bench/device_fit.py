"""`rynn-edge doctor`'s rows about the inference side: Python, torch, CUDA, the GPU, TensorRT, whether an
artifact's engines match this GPU and TensorRT, and whether the artifact fits this device's free memory
(the formulas of `runtime.bench.memory`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rynn_edge.runtime.backends.artifact import Artifact, LocalGPU, local_gpu, local_tensorrt_version
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.health import FAIL, OK, SKIP, WARN, Row

SUPPORTED_PYTHON = ((3, 10), (3, 12))  # pyproject's requires-python
INSTALL_TENSORRT = (
    "Jetson: sudo apt install python3-libnvinfer (JetPack), then `make setup` again (the venv shares the "
    "system's TensorRT); desktop: pip install tensorrt"
)
CUDA_TORCH = (
    "Jetson: install NVIDIA's torch wheel for your JetPack into the system Python, then `make setup` again "
    "(it keeps that torch); desktop: check `nvidia-smi`, then install a CUDA build of torch into the venv"
)


@dataclass(frozen=True)
class Device:
    """What this process sees; tests pass their own."""

    python: tuple[int, int, int]
    torch: str | None
    torch_cuda: str | None
    gpu: LocalGPU | None
    tensorrt: str | None
    free_gpu_bytes: int | None  # a discrete GPU's free memory; None: unified memory or no GPU


def this_device() -> Device:
    try:
        import torch
    except ImportError:
        return Device(sys.version_info[:3], None, None, None, local_tensorrt_version(), None)
    gpu = local_gpu()
    free = torch.cuda.mem_get_info(0)[0] if gpu is not None else None
    trt = local_tensorrt_version()
    return Device(sys.version_info[:3], torch.__version__, torch.version.cuda, gpu, trt, free)


def software_rows(device: Device) -> list[Row]:
    rows = []
    version = ".".join(map(str, device.python))
    low, high = SUPPORTED_PYTHON
    if low <= device.python[:2] <= high:
        rows.append(Row("Python", OK, f"{version} ({sys.executable})"))
    else:
        rows.append(Row("Python", FAIL, version, "use Python 3.10-3.12: PYTHON=python3.10 make setup"))
    if device.torch is None:
        rows.append(Row("torch", FAIL, "not importable", "make setup"))
    else:
        rows.append(Row("torch", OK, device.torch))
    if device.torch_cuda is None:
        rows.append(Row("CUDA", FAIL, "torch is a CPU build: backends cuda and tensorrt refuse", CUDA_TORCH))
    elif device.gpu is None:
        rows.append(
            Row(
                "CUDA",
                FAIL,
                f"torch built for CUDA {device.torch_cuda}, but no GPU is usable",
                "check the driver with nvidia-smi (Jetson: the NVIDIA container runtime, --runtime nvidia)",
            )
        )
    else:
        rows.append(Row("CUDA", OK, f"torch built for CUDA {device.torch_cuda}"))
    if device.gpu is None:
        rows.append(Row("GPU", FAIL, "none visible to torch", "see the CUDA row"))
    else:
        rows.append(Row("GPU", OK, f"{device.gpu.name}, compute capability {device.gpu.compute_capability}"))
    if device.tensorrt is None:
        rows.append(Row("TensorRT", FAIL, "the tensorrt Python module is not importable", INSTALL_TENSORRT))
    else:
        rows.append(Row("TensorRT", OK, device.tensorrt))
    return rows


def engine_row(artifact: Artifact, device: Device) -> Row:
    check = f"engines {artifact.path.name}"
    target = artifact.target
    if target.get("kind") != "tensorrt":
        if device.tensorrt is None or device.gpu is None:
            return Row(check, OK, f"{target.get('kind', 'onnx')} graphs: run with --backend onnxruntime")
        return Row(
            check,
            WARN,
            f"{target.get('kind', 'onnx')} graphs, no TensorRT engines",
            f"rynn-edge build {artifact.path} (engines for this GPU and TensorRT), then --backend tensorrt",
        )
    problem = artifact.device_problem(device.gpu, device.tensorrt)
    if problem:
        return Row(check, FAIL, problem, f"rynn-edge build {artifact.path} on this machine")
    built = target.get("gpu", {})
    return Row(check, OK, f"built for {built.get('name')} and TensorRT {target.get('tensorrt_version')}")


def _meminfo_available(meminfo: str = "/proc/meminfo") -> int:
    for line in Path(meminfo).read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise UserError(f"{meminfo} has no MemAvailable line")


def memory_row(artifact: Artifact, device: Device, meminfo: str = "/proc/meminfo") -> Row:
    """The artifact's runtime memory by `runtime.bench.memory.runtime_memory` against what is free now."""
    from rynn_edge.runtime.backends.tensorrt import max_dims
    from rynn_edge.runtime.bench import memory as M
    from rynn_edge.runtime.bench.roofline import CHAMELEON_VQ
    from rynn_edge.runtime.model.config import ModelConfig

    check = f"memory {artifact.path.name}"
    entries = artifact.stages()
    if "backbone_prefill" not in entries:
        return Row(check, SKIP, "no backbone_prefill stage: nothing to size")
    cfg = ModelConfig.from_dict(artifact.model, source=f"{artifact.path}/manifest.json")
    precision = entries["backbone_prefill"].get("precision", "fp16")
    longest = max_dims(entries["backbone_prefill"])["L"]
    # The manifest does not record the VQGAN's shape: Chameleon's (the real one) is an upper bound.
    need = M.runtime_memory(cfg, CHAMELEON_VQ, precision, entries, longest)["total_gib"]
    if device.free_gpu_bytes is None:
        free, pool = _meminfo_available(meminfo) / M.GIB, "available (MemAvailable; unified on a Jetson)"
    else:
        free, pool = device.free_gpu_bytes / M.GIB, "free GPU memory"
    found = f"needs {need:.2f} GiB ({precision}, prompt up to {longest} tokens); {free:.1f} GiB {pool}"
    if need <= free:
        return Row(check, OK, found)
    return Row(
        check,
        FAIL,
        found,
        "export at a smaller precision (--precision int4), or close other GPU processes; see the Memory "
        "tables of docs/engines-and-memory.md for what fits which Jetson",
    )
