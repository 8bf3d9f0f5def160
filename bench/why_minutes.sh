#!/usr/bin/env bash
# Why minutes, not nights: start from the 2016 script's settings and switch on pong_pg's differences
# one at a time, each for the same training time, one run per seed side by side (one worker each, so
# two runs share two cores and no weights are stale):
#   A  --preset 2016                               lr 1e-4, RMSProp decay 0.99, returns standardized per episode
#   B  --preset 2016 --lr 0.001                    + our learning rate
#   C  --preset 2016 --lr 0.001 --decay-rate 0.9   + our RMSProp decay
#   D  --lr 0.001 --entropy 0                      + returns standardized over the batch (the defaults
#                                                  before lr 3e-3 and the entropy bonus)
# then prints agent steps to running means -15, -10, -5 and 0 per run (bench/learning_curves.py).
#
#   bash bench/why_minutes.sh [MINUTES] [OUT]      (default: 15 minutes a run, runs/why_minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-15}
out=${2:-runs/why_minutes}
mkdir -p "$out"
settings=("--preset 2016" "--preset 2016 --lr 0.001" "--preset 2016 --lr 0.001 --decay-rate 0.9" "--lr 0.001 --entropy 0")
for seed in 0 1; do
    (
        for setting in "${settings[@]}"; do
            # shellcheck disable=SC2086  # the setting is several flags
            python bench/learning_curves.py $setting --workers 1 --seeds "$seed" --minutes "$minutes" \
                --target 0 --out "$out" > "$out.seed$seed.log" 2>&1
        done
    ) &
done
wait
python bench/learning_curves.py --report-only --by-steps --out "$out"
