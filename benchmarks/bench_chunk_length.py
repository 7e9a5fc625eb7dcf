"""Hz vs action-chunk length, recorded: `rynn-edge bench` into benchmarks/results/NAME/ (bench.csv/json/png).

    python benchmarks/bench_chunk_length.py cpu_tiny --threads 2
    python benchmarks/bench_chunk_length.py cpu_mid --hidden-size 1024 --layers 4 --threads 2
    python benchmarks/bench_chunk_length.py gpu_7b_random --model CKPT --tokenizer TOK --vq VQ \\
        --device cuda --precision bf16 --modes continuous,discrete-parallel

Every option after the model options is passed to `rynn-edge bench` unchanged (defaults below).
"""

from __future__ import annotations

from runs import cli

DEFAULTS = ["--chunk-lengths", "1,5,10,20,40,60"]
DEFAULTS += ["--modes", "continuous,discrete-sequential,discrete-parallel"]

if __name__ == "__main__":
    cli("bench", __doc__, DEFAULTS)
