"""Packages of the three mapped folders and the C extension (kernels/csrc/*.c -> rynn_edge.kernels._native).

Everything else is in pyproject.toml.
"""

from glob import glob

from setuptools import find_packages, setup
from setuptools.extension import Extension

FOLDERS = {"runtime": "rynn_edge.runtime", "export": "rynn_edge.export", "kernels": "rynn_edge.kernels"}
packages = [
    name
    for folder, package in FOLDERS.items()
    for name in [package] + [f"{package}.{sub}" for sub in find_packages(folder)]
]

sources = sorted(glob("kernels/csrc/*.c"))
extensions = (
    [
        Extension(
            "rynn_edge.kernels._native",
            sources=sources,
            include_dirs=["kernels/csrc"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wconversion", "-D_GNU_SOURCE"],
            libraries=["pthread", "rt"],
        )
    ]
    if sources
    else []
)

setup(packages=packages, ext_modules=extensions)
