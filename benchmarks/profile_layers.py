"""Per-layer latency, recorded: `rynn-edge profile` into benchmarks/results/NAME/ (profile.csv/json/png).

    python benchmarks/profile_layers.py profile_cpu_tiny --threads 2
    python benchmarks/profile_layers.py profile_cpu_mid --hidden-size 1024 --layers 4 --threads 2

Every option after the model options is passed to `rynn-edge profile` unchanged (default: all stages).
"""

from __future__ import annotations

from runs import cli

if __name__ == "__main__":
    cli("profile", __doc__, ["--stage", "all"])
