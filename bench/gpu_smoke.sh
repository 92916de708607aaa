#!/usr/bin/env bash
# GPU smoke test (<= 8 min), for a machine with a GPU; the CPU half also runs anywhere.
#   1. likelihood scorer throughput (problems/s), hf backend, GPU vs CPU, same model and problems;
#   2. DPP selection time on the GPU at N=1M, k=100k, d=384;
#   3. (when vllm is installed) one rollout-scoring pass with --backend vllm.
# Each step has its own time limit; a step that fails is reported and the script goes on.
#   bash bench/gpu_smoke.sh            # PY=python to use another interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 P3_PROGRESS=0
# A mid-sized random Llama (hidden 512, 8 layers): big enough for the GPU to matter, no download.
SIZE=(--hidden 512 --layers 8 --no-reference --repeats 2)
status=0
run() {  # run LIMIT_SECONDS LABEL CMD...
  local limit=$1 label=$2; shift 2
  echo "== $label"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -E "Loading weights|Writing model" | tail -n 4
  local rc=${PIPESTATUS[0]}
  echo "   ($label: exit $rc, $((SECONDS - t0))s)"
  [ "$rc" = 0 ] || status=1
}

run 150 "scorer throughput, hf, CPU" "$PY" bench/score_speed.py --device cpu --n 32 --batch-size 8 "${SIZE[@]}"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  "$PY" -c "import torch; print('gpu:', torch.cuda.get_device_name(0))"
  run 120 "scorer throughput, hf, GPU" "$PY" bench/score_speed.py --device cuda --n 1024 --batch-size 64 "${SIZE[@]}"
  run 200 "DPP N=1M k=100k d=384, GPU" "$PY" - <<'PYEOF'
import sys, time
sys.path.insert(0, "bench")
from dpp_scale import make_data  # the CPU benchmark's data, so the two times compare
from p3.dpp import dpp_select
X, q = make_data(1_000_000, 384)
t = time.perf_counter()
r = dpp_select(X, q, 100_000, device="cuda")
print(f"dpp N=1M k=100k device={r.device} picks={len(r.order)} rounds={r.n_rounds} "
      f"seconds={time.perf_counter() - t:.1f}")
PYEOF
  if "$PY" -c "import vllm" 2>/dev/null; then
    run 240 "rollout scoring, vllm backend" bash -c '
      set -e; d=$(mktemp -d)
      "$0" -m p3.cli data synth --out "$d/p.parquet" --n 64
      "$0" -m p3.cli model tiny --out "$d/m" --hidden 256 --heads 4 --train-on "$d/p.parquet" --steps 0
      "$0" -m p3.cli score --backend vllm --mode rollout --n 8 --max-new-tokens 64 \
        --problems "$d/p.parquet" --model "$d/m" --out "$d/d.parquet" --gpu-memory-utilization 0.3
      "$0" -c "import pyarrow.parquet as pq, sys; t = pq.read_table(sys.argv[1]); print(\"vllm rollouts:\", t.num_rows)" "$d/d.rollouts.parquet"
    ' "$PY"
  else
    echo "== vllm not installed: skipped (pip install 'p3-kubeflow[gpu]')"
  fi
else
  echo "== no GPU visible: GPU throughput, DPP on GPU and vllm skipped"
fi
exit $status
