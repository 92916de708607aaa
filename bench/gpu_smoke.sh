#!/usr/bin/env bash
# GPU smoke test: on one GPU, in under 10 minutes, one line per check (bench/gpu_smoke.py):
#   qlora       QLoRA training of a small Llama built on the spot (no download)
#   likelihood  likelihood scoring, hf backend, with the QLoRA-trained model
#   rollout     rollout scoring (sampled + graded), hf backend
#   vllm        both scoring modes with the vllm backend (SKIP when vllm is not installed)
#   dpp         DPP selection at N=1M, k=100k, d=384 on CUDA
#   pipeline    the tiny pipeline, two epochs, through kfp.local, with qlora=on
# Usage, after `make install` (or with PY=python of an environment that has p3-kubeflow[qlora]):
#   bash bench/gpu_smoke.sh                 # all checks; exit 1 when one failed
#   bash bench/gpu_smoke.sh --only dpp      # some of them
#   bash bench/gpu_smoke.sh --cpu           # the same checks at toy sizes on a CPU (tests the script)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 P3_PROGRESS=0 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# Each check has its own limit inside; this one bounds the whole run (10 minutes). The libraries'
# own logging goes to a temp file, whose end is shown on stderr when a check failed.
LOG=$(mktemp -t p3-gpu-smoke.XXXXXX.log)
trap 'rm -f "$LOG"' EXIT
timeout --kill-after=10 600 "$PY" bench/gpu_smoke.py "$@" 2>"$LOG"
rc=$?
if [ "$rc" != 0 ]; then echo "gpu_smoke: exit $rc; the end of the libraries' log:" >&2; tail -n 40 "$LOG" >&2; fi
exit "$rc"
