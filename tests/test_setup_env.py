"""`make setup`'s machine detection (tools/setup_env.py) with faked inputs: the Jetson release file, a
`nvidia-smi` that answers, a CUDA folder, and a base Python on whose path a fake `tensorrt` / NVIDIA
`torch` / numpy 1 can be imported. Each case asserts the venv options it chooses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ["dev", "onnx", "export", "trt-check", "camera", "plot", "sdk", "serve"]
JETPACK6 = "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19"
NV_TORCH = "2.3.0a0+6ddf5cf85e.nv24.04"


def _load():
    spec = importlib.util.spec_from_file_location("setup_env", ROOT / "tools" / "setup_env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


setup_env = _load()


@pytest.fixture
def fake(tmp_path: Path):
    """Builders for the faked inputs, all under tmp_path."""

    class Fake:
        site = tmp_path / "site"

        def package(self, name: str, body: str) -> None:
            (self.site / name).mkdir(parents=True, exist_ok=True)
            (self.site / name / "__init__.py").write_text(body)

        def env(self) -> dict:
            return {**os.environ, "PYTHONPATH": str(self.site)}

        def release(self, text: str = JETPACK6) -> str:
            path = tmp_path / "nv_tegra_release"
            path.write_text(text + "\n")
            return str(path)

        def nvidia_smi(self, line: str = "NVIDIA GeForce RTX 4090, 550.54.14, 8.9") -> list[str]:
            path = tmp_path / "nvidia-smi"
            path.write_text(f"#!/bin/sh\necho '{line}'\n")
            path.chmod(0o755)
            return [str(path)]

    out = Fake()
    out.site.mkdir()
    out.missing = str(tmp_path / "absent")
    # By default the base Python has PyPI's CPU torch and numpy 2 (as on CI), without importing the real ones.
    out.package("torch", "__version__ = '2.13.0+cpu'\nclass version:\n    cuda = None\n")
    out.package("numpy", "__version__ = '2.2.6'\n")
    return out


def nv_torch(fake, version: str = NV_TORCH, numpy: str = "1.26.4") -> None:
    fake.package("torch", f"__version__ = {version!r}\nclass version:\n    cuda = '12.4'\n")
    fake.package("numpy", f"__version__ = {numpy!r}\n")


def detect(fake, *, release: str | None = None, smi: list[str] | None = None, arch="x86_64", cuda=None):
    return setup_env.detect(
        sys.executable,
        tegra_release=release or fake.missing,
        nvidia_smi=smi or [fake.missing],
        cuda_home=cuda or fake.missing,
        arch=arch,
        env=fake.env(),
    )


def test_cpu_machine_keeps_todays_setup(fake) -> None:
    machine = detect(fake)
    chosen = setup_env.plan(machine, "", EXTRAS)
    assert machine.kind == "cpu"
    assert (chosen.system_site_packages, chosen.torch, chosen.constraints, chosen.extras) == (
        False,
        "torch==2.13.0",
        [],
        EXTRAS,
    )
    py = ".venv/bin/python"
    assert setup_env.commands(chosen, "python3", ".venv") == [
        ["python3", "-m", "venv", ".venv"],
        [py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [py, "-m", "pip", "install", "-q", "-c", ".venv/constraints.txt", "torch==2.13.0"],
        [py, "-m", "pip", "install", "-q", "-c", ".venv/constraints.txt", "-e", f".[{','.join(EXTRAS)}]"],
        [py, "-m", "pip", "install", "-q", "--no-deps", "openpi-client==0.1.2"],
    ]


def test_jetson_shares_tensorrt_keeps_nvidia_torch_and_pins_numpy1(fake) -> None:
    fake.package("tensorrt", "__version__ = '10.3.0'\n")
    nv_torch(fake)
    machine = detect(fake, release=fake.release(), arch="aarch64")
    chosen = setup_env.plan(machine, "", EXTRAS)
    assert machine.kind == "jetson" and machine.base["tensorrt"] == "10.3.0"
    assert chosen.system_site_packages and chosen.torch is None
    assert chosen.constraints == [f"torch=={NV_TORCH}", "numpy<2"]
    assert "trt-check" not in chosen.extras and len(chosen.extras) == len(EXTRAS) - 1
    said = "\n".join(chosen.reasons)
    assert "R36 (release)" in said and "TensorRT 10.3.0" in said and "numpy 2 breaks it" in said
    venv, *_ = setup_env.commands(chosen, "python3", "v")
    assert venv == ["python3", "-m", "venv", "--system-site-packages", "v"]
    assert not any("torch" in arg for step in setup_env.commands(chosen, "python3", "v") for arg in step)


def test_torch_override_wins_on_a_jetson(fake) -> None:
    fake.package("tensorrt", "__version__ = '10.3.0'\n")
    nv_torch(fake)
    chosen = setup_env.plan(detect(fake, release=fake.release(), arch="aarch64"), "torch==2.5.0", EXTRAS)
    assert chosen.system_site_packages and chosen.torch == "torch==2.5.0" and chosen.constraints == []


def test_new_nvidia_torch_with_numpy2_is_not_pinned(fake) -> None:
    nv_torch(fake, "2.8.0+nv25.08", numpy="2.1.0")
    chosen = setup_env.plan(detect(fake, release=fake.release(), arch="aarch64"), "", EXTRAS)
    assert chosen.constraints == ["torch==2.8.0+nv25.08"]


def test_old_torch_is_pinned_to_numpy1_even_when_numpy2_is_installed(fake) -> None:
    nv_torch(fake, "2.1.0", numpy="2.0.1")
    chosen = setup_env.plan(detect(fake, smi=fake.nvidia_smi()), "", EXTRAS)
    assert chosen.constraints == ["torch==2.1.0", "numpy<2"]


def test_aarch64_with_cuda_and_no_release_file_is_a_jetson(fake, tmp_path) -> None:
    """Thor (JetPack 7) and other SBSA boards: no nv_tegra_release, but a CUDA toolkit."""
    (tmp_path / "cuda").mkdir()
    machine = detect(fake, arch="aarch64", cuda=str(tmp_path / "cuda"))
    chosen = setup_env.plan(machine, "", EXTRAS)
    assert machine.kind == "jetson" and not chosen.system_site_packages
    assert chosen.torch == "torch==2.13.0" and any("no CUDA torch for Jetson" in r for r in chosen.reasons)


def test_desktop_gpu_with_tensorrt_shares_site_packages_but_installs_pypi_torch(fake) -> None:
    fake.package("tensorrt", "__version__ = '10.13.0'\n")
    machine = detect(fake, smi=fake.nvidia_smi())
    chosen = setup_env.plan(machine, "", EXTRAS)
    assert machine.kind == "cuda-desktop" and machine.gpu.startswith("NVIDIA GeForce RTX 4090")
    assert chosen.system_site_packages and chosen.torch == "torch==2.13.0" and chosen.constraints == []
    assert chosen.extras == EXTRAS


def test_desktop_gpu_without_tensorrt_stays_isolated_and_says_how_to_get_it(fake) -> None:
    chosen = setup_env.plan(detect(fake, smi=fake.nvidia_smi()), "", EXTRAS)
    assert not chosen.system_site_packages
    assert any("pip install tensorrt" in r for r in chosen.reasons)


def test_a_failing_nvidia_smi_means_no_gpu(fake, tmp_path) -> None:
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    broken.chmod(0o755)
    assert detect(fake, smi=[str(broken)]).kind == "cpu"


def test_dry_run_on_this_machine_prints_the_plan(fake) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "setup_env.py"), "--dry-run", "--extras", "dev,sdk"],
        capture_output=True,
        text=True,
        check=True,
        env=fake.env(),
    ).stdout
    shown = json.loads(out)
    assert shown["plan"]["extras"] == ["dev", "sdk"] and shown["commands"][-2][-1] == ".[dev,sdk]"


def test_a_gpu_less_container_build_with_tensorrt_shares_it(fake) -> None:
    """docker build sees no GPU (no nvidia-smi), but NVIDIA's base image has TensorRT: keep it visible."""
    fake.package("tensorrt", "__version__ = '10.13.0'\n")
    machine = detect(fake)
    chosen = setup_env.plan(machine, "", EXTRAS)
    assert machine.kind == "cpu" and chosen.system_site_packages and chosen.torch == "torch==2.13.0"
