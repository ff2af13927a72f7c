#!/bin/sh
# The README's Prefect commands, run as written against a real server and a process worker:
#   sh scripts/prefect_recipe.sh [REPO]
# REPO (default: a temp copy of this working tree, as a git repository) is where the
# deployment runs. Uses its own PREFECT_HOME and port (PORT, default 4311) so it disturbs
# no other server. Overrides of the run: OVERRIDES (default the README's tiny profile);
# STAGES (a JSON list) runs only those stages. Exits 0 when the flow run is Completed and,
# for a whole run, its two artifacts (headline numbers, ablation report) exist.
set -eu
ROOT=$(pwd)
PORT=${PORT:-4311}
OVERRIDES=${OVERRIDES:-'["data=tiny","train=tiny"]'}
[ -d "$ROOT/.venv/bin" ] && PATH="$ROOT/.venv/bin:$PATH"
export PATH PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
export PREFECT_HOME=$(mktemp -d)
unset FRCNN_PIPELINE_RUN_ID MLFLOW_TRACKING_URI PREFECT_API_URL

if [ $# -ge 1 ]; then
  REPO=$1
else
  REPO=$(mktemp -d)/repo && mkdir -p "$REPO"
  git ls-files -co --exclude-standard -z | xargs -0 tar -cf - | tar -xf - -C "$REPO"
  (cd "$REPO" && git init -q && git add -A && git -c user.email=r@example.com -c user.name=r commit -qm pipeline)
fi
cd "$REPO"

# --- README, "Prefect" (terminal 1)
prefect server start --host 127.0.0.1 --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
for _ in $(seq 90); do curl -sf "$PREFECT_API_URL/health" > /dev/null && break; sleep 2; done
# --- README, every other terminal
prefect work-pool create cpu --type process
prefect deploy --name cpu
if [ -n "${STAGES:-}" ]; then   # e.g. STAGES='["prepare_data"]': a quick check of the mechanics
  prefect deployment run 'faster-rcnn-pipeline/cpu' --param "overrides=$OVERRIDES" --param "stages=$STAGES" \
    | tee "$PREFECT_HOME/run.txt"
else
  prefect deployment run 'faster-rcnn-pipeline/cpu' --param "overrides=$OVERRIDES" | tee "$PREFECT_HOME/run.txt"
fi
# --- terminal 2: the worker (--run-once: it takes the scheduled run, runs it, exits)
prefect worker start --pool cpu --run-once

FLOW_RUN=$(sed -n 's/.*UUID: *\([0-9a-f-]*\).*/\1/p' "$PREFECT_HOME/run.txt" | head -1)
python - "$FLOW_RUN" "${STAGES:-}" <<'PY'
import asyncio, sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId


async def main(flow_run_id: str, stages: str) -> int:
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))
    keys = sorted(a.key for a in artifacts if a.key)
    print(f"flow run {flow_run_id}: {run.state.type.value}; artifacts {keys}")
    # A partial run (STAGES) publishes what it produced; the whole pipeline both artifacts.
    wanted = ["ablation-report", "headline-numbers"] if not stages or "summary" in stages else keys
    return 0 if run.state.is_completed() and keys == wanted else 1


sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
PY
