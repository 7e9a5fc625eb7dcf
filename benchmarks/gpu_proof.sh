#!/usr/bin/env bash
# The GPU proof in one device call (issue 14), at most ~8 minutes on a fresh H100/H200:
#   1. correctness of --backend cuda (benchmarks/gpu_proof.py: tiny + 2-layer full-width checkpoints)
#   2. the 7B table (benchmarks/gpu_inference.py --config 7b: floor, fused chunk, upstream-style baseline,
#      sequential vs parallel discrete decoding), then, time permitting, a 7B random checkpoint on disk for
#      the `rynn-edge bench` sweep of T in {1,5,10,20,40} (all three modes) and `rynn-edge profile`
#   3. peak memory (in gpu_proof.json and the bench/profile JSON)
#   4. a summary printed last
# Everything lands in $OUT (flat: the device tool brings back 8 files at most, so logs are concatenated).
# Usage on the device:  OUT=... bash benchmarks/gpu_proof.sh      (needs torch with CUDA; no network)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-proof-out}
WORK=${WORK:-/tmp/rynn-proof}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_proof.log"
: >"$LOG"
started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }
step() { # step NAME SECONDS CMD...: runs CMD under a time limit, output appended to the log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, at $(elapsed)s)" >>"$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$(elapsed)" | tee -a "$OUT/steps.txt" >>"$LOG"
}

python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1 || {
    tail -30 "$LOG"
    exit 1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >>"$OUT/gpu.txt"

step proof 200 python3 benchmarks/gpu_proof.py --work "$WORK" --out "$OUT"
step inference_7b 180 python3 benchmarks/gpu_inference.py --config 7b --runs 10 --out "$OUT"
if [ "$(elapsed)" -lt 300 ]; then
    step checkpoint_7b 120 python3 -m rynn_edge.runtime.cli make-tiny-checkpoint "$WORK/7b" --hidden-size 4096 --layers 32 \
        --intermediate-size 11008
    B=("$WORK/7b/model" --tokenizer "$WORK/7b/tokenizer" --vq "$WORK/7b/vq")
    step bench_7b 150 python3 -m rynn_edge.runtime.cli bench "${B[@]}" --backend cuda --precision bf16 --weights random \
        --chunk-lengths 1,5,10,20,40 --modes continuous,discrete-sequential,discrete-parallel --runs 5 \
        --warmup 2 --out "$WORK/bench" --no-plot --json
    cp "$WORK/bench/bench.json" "$OUT/bench_7b.json" 2>/dev/null
    step profile_7b 90 python3 -m rynn_edge.runtime.cli profile "${B[@]}" --device cuda --precision bf16 --stage backbone_prefill \
        --runs 3 --out "$WORK/profile" --no-plot --json
    cp "$WORK/profile/profile.json" "$OUT/profile_7b.json" 2>/dev/null
fi

echo "=== summary ($(elapsed) s)"
cat "$OUT/gpu.txt" "$OUT/steps.txt"
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
proof = out / "gpu_proof.json"
if proof.exists():
    p = json.loads(proof.read_text())
    for r in p["checks"]:
        print(("PASS " if r["passed"] else "FAIL ") + r["check"])
    print("memory", json.dumps(p["memory"]))
for f in sorted(out.glob("gpu_inference_cuda_7b.json")):
    r = json.loads(f.read_text())["results"]
    keys = ("floor_ms", "ours_chunk_ms", "ours_over_floor", "upstream_chunk_ms", "speedup_vs_upstream",
            "sequential_decode_ms", "parallel_decode_ms", "parallel_decode_speedup")
    print("7b:", " ".join(f"{k}={r[k]:.4g}" for k in keys if k in r))
bench = out / "bench_7b.json"
if bench.exists():
    for r in json.loads(bench.read_text())["rows"]:
        print(f"bench {r['mode']:20s} T={r['chunk_length']:3d} median_ms={r['median_ms']:.4g}")
EOF
