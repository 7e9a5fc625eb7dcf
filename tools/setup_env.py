"""`make setup`'s installer: finds what kind of machine this is, then makes the venv to suit it.

  CPU machine      an isolated venv with PyPI's torch (TORCH, default torch==2.13.0): CI and laptops.
  Jetson           /etc/nv_tegra_release, or aarch64 with CUDA (Thor): JetPack's TensorRT bindings are a
                   Debian package, NVIDIA's torch a wheel for the system Python: the venv must see both.
  desktop GPU      nvidia-smi answers.
Wherever the base Python has TensorRT or a CUDA torch (a container build sees no GPU), the venv shares them.

NVIDIA's torch is kept, not replaced: pip is constrained to its exact version. numpy is pinned below 2
when that torch was built against numpy 1 (numpy 2 breaks it at import). An explicit TORCH=... always wins.
Every input (release file, nvidia-smi, CUDA folder, machine, base interpreter) can be injected: see
tests/test_setup_env.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TORCH = "torch==2.13.0"  # PyPI's build; on x86 CI machines the CPU wheel from the local index
TEGRA_RELEASE = "/etc/nv_tegra_release"
CUDA_HOME = "/usr/local/cuda"
# Extras whose wheels exist only for x86_64 (NVIDIA's TensorRT-RTX builder on a CPU): a device has TensorRT.
X86_ONLY_EXTRAS = {"trt-check"}
# torch releases before 2.3 were all built against numpy 1 (numpy 2 support arrived in torch 2.3).
FIRST_TORCH_FOR_NUMPY2 = (2, 3)

PROBE = """
import json
out = {"python": "%d.%d.%d" % __import__("sys").version_info[:3]}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = getattr(torch.version, "cuda", None)
except Exception as err:
    out["torch_error"] = repr(err)
for name in ("numpy", "tensorrt"):
    try:
        out[name] = __import__(name).__version__
    except Exception:
        pass
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Machine:
    """What the detection found: every field is an observation, not a decision."""

    arch: str
    tegra_release: str | None  # first line of /etc/nv_tegra_release
    gpu: str | None  # nvidia-smi's first GPU, "name, driver, compute capability"
    cuda_home: bool
    base: dict  # the base interpreter's packages (PROBE's output)

    @property
    def kind(self) -> str:
        if self.tegra_release or (self.arch == "aarch64" and (self.gpu or self.cuda_home)):
            return "jetson"
        return "cuda-desktop" if self.gpu else "cpu"


@dataclass
class Plan:
    system_site_packages: bool = False
    torch: str | None = DEFAULT_TORCH  # the requirement to install; None keeps the base's torch
    constraints: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _first_line(path: Path) -> str | None:
    try:
        return path.read_text().splitlines()[0].strip() or "present"
    except (FileNotFoundError, IndexError):
        return None if not path.exists() else "present"


def _nvidia_smi(command: list[str]) -> str | None:
    query = ["--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"]
    try:
        done = subprocess.run(command + query, capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, PermissionError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def probe_python(python: str, env: dict | None = None) -> dict:
    """The base interpreter's Python, torch (and its CUDA), numpy and tensorrt versions."""
    done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        sys.exit(f"setup: {python} does not run ({done.stderr.strip()}); set PYTHON= to a Python 3.10-3.12")
    return json.loads(done.stdout)


def detect(
    python: str,
    *,
    tegra_release: str = TEGRA_RELEASE,
    nvidia_smi: list[str] | None = None,
    cuda_home: str = CUDA_HOME,
    arch: str | None = None,
    env: dict | None = None,
) -> Machine:
    return Machine(
        arch=arch or platform.machine(),
        tegra_release=_first_line(Path(tegra_release)),
        gpu=_nvidia_smi(nvidia_smi or ["nvidia-smi"]),
        cuda_home=Path(cuda_home).is_dir(),
        base=probe_python(python, env),
    )


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:2])


def plan(machine: Machine, torch_override: str, extras: list[str]) -> Plan:
    out = Plan(extras=list(extras))
    base = machine.base
    why = out.reasons
    why.append(
        {
            "jetson": f"Jetson: {machine.tegra_release or f'{machine.arch} with CUDA'}",
            "cuda-desktop": f"desktop with CUDA: nvidia-smi reports {machine.gpu}",
            "cpu": "no NVIDIA GPU (no /etc/nv_tegra_release, nvidia-smi absent or silent)",
        }[machine.kind]
    )
    cuda_torch = base.get("torch") if base.get("torch_cuda") else None
    # Shared whenever the base Python has them, GPU seen or not: a container build sees no GPU.
    if base.get("tensorrt") or cuda_torch:
        out.system_site_packages = True
        found = [f"TensorRT {base['tensorrt']}"] if base.get("tensorrt") else []
        found += [f"torch {cuda_torch} (CUDA {base['torch_cuda']})"] if cuda_torch else []
        why.append(f"venv with --system-site-packages: the base Python has {' and '.join(found)}")
    elif machine.kind != "cpu":
        why.append(
            "isolated venv: the base Python has neither TensorRT nor a CUDA torch (JetPack: "
            "apt install python3-libnvinfer; desktop: pip install tensorrt), so nothing to share"
        )
    if torch_override:
        out.torch = torch_override
        why.append(f"torch: {torch_override} as TORCH= asks")
    elif out.system_site_packages and cuda_torch:
        out.torch = None
        out.constraints.append(f"torch=={cuda_torch}")
        why.append(f"torch: keeping NVIDIA's {cuda_torch} (pip is constrained to it, never replaces it)")
        numpy = base.get("numpy", "")
        built_for_numpy1 = _release(cuda_torch) < FIRST_TORCH_FOR_NUMPY2 or (
            "nv" in cuda_torch.partition("+")[2] and numpy and _release(numpy) < (2,)
        )
        if built_for_numpy1:
            out.constraints.append("numpy<2")
            why.append(
                f"numpy<2: torch {cuda_torch} was built against numpy 1 (system numpy {numpy or 'absent'}); "
                "numpy 2 breaks it at import"
            )
    else:
        why.append(f"torch: {DEFAULT_TORCH} from PyPI")
        if machine.kind == "jetson":
            why.append(
                "warning: PyPI has no CUDA torch for Jetson; install NVIDIA's wheel for your JetPack "
                "(https://developer.nvidia.com/embedded/downloads, or pypi.jetson-ai-lab.io) and re-run"
            )
    if machine.arch != "x86_64":
        dropped = sorted(set(out.extras) & X86_ONLY_EXTRAS)
        out.extras = [e for e in out.extras if e not in X86_ONLY_EXTRAS]
        if dropped:
            why.append(f"extras: without {', '.join(dropped)} (x86_64-only wheels; the device has TensorRT)")
    return out


OPENPI_CLIENT = "openpi-client==0.1.2"


def commands(plan: Plan, python: str, venv: str) -> list[list[str]]:
    py = str(Path(venv) / "bin" / "python")
    constraints = str(Path(venv) / "constraints.txt")
    shared = ["--system-site-packages"] if plan.system_site_packages else []
    make_venv = [python, "-m", "venv", *shared, venv]
    out = [make_venv, [py, "-m", "pip", "install", "-q", "--upgrade", "pip"]]
    if plan.torch:
        out.append([py, "-m", "pip", "install", "-q", "-c", constraints, plan.torch])
    extras = f"[{','.join(plan.extras)}]" if plan.extras else ""
    out.append([py, "-m", "pip", "install", "-q", "-c", constraints, "-e", f".{extras}"])
    if "dev" in plan.extras:
        # openpi's real client for the serving tests: it pins numpy<2 but runs on numpy 2, so without its
        # pins (its other requirements come with the dev and serve extras).
        out.append([py, "-m", "pip", "install", "-q", "--no-deps", OPENPI_CLIENT])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", default=sys.executable, help="the base interpreter the venv is made from")
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--torch", default="", help="a torch requirement that overrides the detection")
    parser.add_argument("--extras", default="", help="comma-separated extras of this package to install")
    parser.add_argument("--tegra-release", default=TEGRA_RELEASE)
    parser.add_argument("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi command")
    parser.add_argument("--cuda-home", default=CUDA_HOME)
    parser.add_argument("--arch", default=None, help="machine architecture (default: this machine's)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan as JSON, run nothing")
    args = parser.parse_args(argv)
    machine = detect(
        args.python,
        tegra_release=args.tegra_release,
        nvidia_smi=shlex.split(args.nvidia_smi),
        cuda_home=args.cuda_home,
        arch=args.arch,
    )
    chosen = plan(machine, args.torch, [e for e in args.extras.split(",") if e])
    steps = commands(chosen, args.python, args.venv)
    if args.dry_run:
        print(json.dumps({"kind": machine.kind, "plan": chosen.__dict__, "commands": steps}, indent=2))
        return 0
    for line in chosen.reasons:
        print(f"setup: {line}")
    run_steps(steps, chosen.constraints, Path(args.venv) / "constraints.txt")
    return 0


def run_steps(steps: list[list[str]], constraints: list[str], constraints_file: Path) -> None:
    subprocess.run(steps[0], check=True)
    constraints_file.write_text("".join(f"{c}\n" for c in constraints))
    for step in steps[1:]:
        print(" ".join(shlex.quote(s) for s in step), flush=True)
        subprocess.run(step, check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


if __name__ == "__main__":
    sys.exit(main())
