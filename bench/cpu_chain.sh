#!/usr/bin/env bash
# The tiny model's warm-up and the five-step chain on CPU, as five `p3` processes each
# (the figures in docs/models.md). Usage: bash bench/cpu_chain.sh [WORKDIR]
#   warm-up: 1,000 mini-MATH training problems, 300 steps; greedy accuracy on 200 test problems
#   chain:   score -> embed -> select -> train (--full) -> evaluate on 500 / 100 problems
set -euo pipefail
P3="${P3:-.venv/bin/p3}"
W="${1:-$(mktemp -d)}"
mkdir -p "$W"
export HF_HUB_OFFLINE=1 P3_PROGRESS=0
secs() { local t0=$SECONDS; "$@" >/dev/null 2>>"$W/log"; echo $((SECONDS - t0)); }

$P3 data synth --n 1000 --seed 0 --split train --out "$W/warm.parquet" 2>>"$W/log"
$P3 data synth --n 200 --seed 1 --split test --out "$W/test200.parquet" 2>>"$W/log"
echo "warm-up (1000 problems, 300 steps): $(secs $P3 model bootstrap --out "$W/m0" --train-on "$W/warm.parquet" --steps 300) s"
$P3 evaluate --problems "$W/test200.parquet" --model "$W/m0" --out "$W/eval0.json" --max-new-tokens 96 2>>"$W/log"
.venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1])); print('accuracy by level:', ' / '.join(f\"{v['accuracy']:.3f}\" for _, v in sorted(r['by_level'].items())))" "$W/eval0.json"

$P3 data synth --n 500 --seed 2 --split train --out "$W/train.parquet" 2>>"$W/log"
$P3 data synth --n 100 --seed 3 --split test --out "$W/test.parquet" 2>>"$W/log"
t0=$SECONDS
$P3 score --problems "$W/train.parquet" --model "$W/m0" --out "$W/difficulty.parquet" 2>>"$W/log"
$P3 embed --problems "$W/train.parquet" --out "$W/embeddings.parquet" 2>>"$W/log"
$P3 select --problems "$W/train.parquet" --difficulty "$W/difficulty.parquet" --embeddings "$W/embeddings.parquet" \
    --strategy p3 --budget 150 --epochs 3 --out "$W/selection.parquet" 2>>"$W/log"
$P3 train --problems "$W/train.parquet" --selection "$W/selection.parquet" --model "$W/m0" --out "$W/m1" --full >/dev/null 2>>"$W/log"
$P3 evaluate --problems "$W/test.parquet" --model "$W/m1" --out "$W/eval1.json" --max-new-tokens 96 2>>"$W/log"
echo "chain score->embed->select->train->evaluate (500 / 100 problems, five processes): $((SECONDS - t0)) s"
