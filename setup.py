"""Build the C extension (kernels/csrc/*.c -> rynn_edge.kernels._native); everything else is in pyproject."""

from glob import glob

from setuptools import setup
from setuptools.extension import Extension

sources = sorted(glob("kernels/csrc/*.c"))
extensions = [
    Extension(
        "rynn_edge.kernels._native",
        sources=sources,
        include_dirs=["kernels/csrc"],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-D_GNU_SOURCE"],
        libraries=["pthread", "rt"],
    )
] if sources else []

setup(ext_modules=extensions)
