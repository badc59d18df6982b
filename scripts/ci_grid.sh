#!/usr/bin/env bash
# The CI regression grid (run by .ci/run with CAUSCELL_BENCH_THREADS=1, two cells at a time: one thread
# each, so the values do not depend on --jobs): a small quick-preset grid on `synthetic`, checked against the
# committed reference table (budgets capped to keep CI short: scVI at 30 epochs, CausCell and CausCell_IND at
# 600 steps, before their early stopping's checks begin (~300 s a cell uncapped, ~65 s capped), MichiGAN's
# GAN at 250 generator steps, below its quick floor of 500). Regenerate the reference after an intended
# change with
#   bash scripts/ci_grid.sh --update
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ci}
REF=results/ci_synthetic.csv
.venv/bin/causcell-bench run --methods all --dataset synthetic --n-cells 600 --n-genes 150 \
    --folds 0 --device cpu --jobs 2 --out "$OUT" --no-report --param scVI.max_epochs=30 --param MichiGAN.gan_steps=250 \
    --param CausCell.n_steps=600 --param CausCell_IND.n_steps=600
if [ "${1:-}" = "--update" ]; then
  .venv/bin/python - "$OUT" "$REF" <<'PY'
import sys
from causcell_bench.leaderboard import summarize, tidy_table
from causcell_bench.store import ResultStore
s = summarize(tidy_table(ResultStore(sys.argv[1]).records()))
s = s[s["aggregate"].astype(bool)]
s[["dataset", "method", "setting", "metric", "higher_is_better", "mean"]].to_csv(sys.argv[2], index=False)
print(f"wrote {sys.argv[2]}: {len(s)} reference values")
PY
fi
.venv/bin/causcell-bench report "$OUT" > /dev/null
.venv/bin/causcell-bench check "$OUT" --reference "$REF"
