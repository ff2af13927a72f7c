#!/bin/sh
# Two tiny experiments that differ in step 1's iterations, then what DVC shows of them:
#   sh scripts/dvc_experiments.sh [DEST]      (from the repository root, venv on PATH or in .venv)
# DEST (default: a new temp folder) gets a git repository holding this working tree (tracked
# and untracked-but-not-ignored files), as tests/test_pipeline_e2e.py makes it. A Prefect
# server on 127.0.0.1:4299 (temporary home) serves the stages' flow runs. The outputs quoted
# in docs/pipeline.md ("Comparing experiments") come from this script; the repository it
# leaves also holds the MLflow store that scripts/mlflow_screenshot.py photographs.
set -eu
ROOT=$(pwd)
DEST=${1:-$(mktemp -d)/repo}
[ -d "$ROOT/.venv/bin" ] && PATH="$ROOT/.venv/bin:$PATH"
export PATH PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
export PREFECT_HOME=$(mktemp -d) PREFECT_API_URL=http://127.0.0.1:4299/api
unset MLFLOW_TRACKING_URI FRCNN_PIPELINE_RUN_ID

mkdir -p "$DEST"
git ls-files -co --exclude-standard -z | xargs -0 tar -cf - | tar -xf - -C "$DEST"
cd "$DEST"
git init -q && git add -A && git -c user.email=demo@example.com -c user.name=demo commit -qm "pipeline"

prefect server start --host 127.0.0.1 --port 4299 > "$PREFECT_HOME/server.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "$PREFECT_API_URL/health" > /dev/null && break; sleep 2; done

for n in 4 6; do
  dvc exp run -n "step1-$n" -S data=tiny -S train=tiny -S train.step1_rpn.iterations=$n > "exp-$n.log" 2>&1
done
echo "== repository: $DEST"
# Tables as a 120-column terminal shows them (rich reads COLUMNS when the output is not a tty).
export COLUMNS=120
echo "== dvc metrics show";  dvc metrics show
echo "== dvc metrics diff step1-4 step1-6"; dvc metrics diff step1-4 step1-6
echo "== dvc exp show (metrics only: every param and dep column dropped)"
dvc exp show --no-pager --drop 'Created|.*[./].*'
echo "== dvc exp diff step1-4 step1-6"; dvc exp diff step1-4 step1-6
echo "== dvc metrics show metrics/evaluate.json (one stage's details)"
dvc metrics show metrics/evaluate.json | cut -c1-120 | head -3
echo "== dvc plots diff step1-4 step1-6"; dvc plots diff step1-4 step1-6 -o plots-diff
