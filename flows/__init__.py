"""Prefect flows: one per DVC stage (``python -m flows.stage <stage>``) and the whole pipeline.

Imported before ``tasks`` (and so before prefect) by every entry point, so the
Prefect defaults below apply to every flow run; an explicit environment wins.
"""
import os

# No usage analytics from the temporary servers Prefect starts when no API is configured.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
