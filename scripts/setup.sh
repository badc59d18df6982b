#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv holding causcell-bench and everything it needs.
# torch goes in first, pinned, so that nothing later pulls a multi-GB CUDA build;
# on a GPU machine set TORCH_SPEC to the CUDA build you want (e.g. TORCH_SPEC="torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-scgen,ray,dev}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do command -v "$cand" >/dev/null && PY=$cand && break; done
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "causcell-bench needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.causcell-bench-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already set up with these requirements
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
.venv/bin/python -c "import causcell_bench, torch, scvi; print('causcell-bench set up: torch', torch.__version__)"
echo "$want" > "$stamp"
