#!/bin/sh
# Run one pipeline stage: `sh flows/stage.sh <stage>` (the `cmd` of every dvc.yaml stage).
#
# Picks the interpreter so that `.venv/bin/dvc repro` works without activating the
# environment: an activated virtual environment (VIRTUAL_ENV) or conda env wins, then
# the checkout's own .venv, then whatever `python` is on PATH.
set -e
if [ -z "$VIRTUAL_ENV" ] && [ -z "$CONDA_PREFIX" ] && [ -x .venv/bin/python ]; then
    exec .venv/bin/python -m flows.stage "$@"
fi
exec python -m flows.stage "$@"
