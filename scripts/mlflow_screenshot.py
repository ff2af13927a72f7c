"""A screenshot of the MLflow UI's run list with one pipeline execution's parent run expanded.

    python scripts/mlflow_screenshot.py REPO [--out docs/mlflow_runs.png]

REPO holds the pipeline's ``mlflow.db`` (e.g. the repository ``scripts/dvc_experiments.sh``
leaves). The script serves it with ``mlflow ui`` on 127.0.0.1, opens the experiment in a
real headless Chromium (the Debian package ``chromium``), clicks the first parent run's
expander through the DevTools protocol (the UI folds child runs by default) and saves a
PNG. It fails, naming the problem, when Chromium is missing, the UI does not come up, or
no parent run with an expander is on the page. The MLflow UI is a JS app: the script
polls for its run links (up to ``--wait`` seconds) before it clicks.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Clicks the expander of the first parent row; returns how many expanders there were.
EXPAND_FIRST = """
(() => {
  const buttons = [...document.querySelectorAll('button')].filter(
    b => (b.getAttribute('data-component-id') || '').includes('runnamecellrenderer'));
  if (buttons.length) buttons[0].click();
  return buttons.length;
})()
"""


# How many run-name links the table shows.
RUN_LINKS = "document.querySelectorAll('a[href*=\"/runs/\"]').length"


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def experiment_id(db: Path, name: str) -> str:
    import mlflow

    experiment = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment_by_name(name)
    if experiment is None:
        raise SystemExit(f"{db}: no MLflow experiment {name!r}")
    return experiment.experiment_id


async def screenshot(debug_port: int, url: str, out: Path, wait: float, width: int, height: int) -> int:
    import websockets

    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json") as response:
        page = next(t for t in json.load(response) if t["type"] == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
        counter = 0

        async def send(method: str, **params: object) -> dict:
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == counter:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

        await send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        async def evaluate(expression: str) -> object:
            return (await send("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")

        await send("Page.navigate", url=url)
        # The run list renders from JS after its API calls: poll for the run links.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not await evaluate(RUN_LINKS):
            await asyncio.sleep(1)
        before = int(await evaluate(RUN_LINKS) or 0)
        expanders = int(await evaluate(EXPAND_FIRST) or 0)
        while time.monotonic() < deadline + wait and expanders and int(await evaluate(RUN_LINKS) or 0) <= before:
            await asyncio.sleep(1)
        await asyncio.sleep(2)
        shot = await send("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        return expanders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow_runs.png"))
    parser.add_argument("--experiment", default="faster-rcnn-alternating")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--debug-port", type=int, default=9333)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds the page may take to render")
    parser.add_argument("--size", default="1600,900")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    db = (args.repo / "mlflow.db").resolve()
    if not db.is_file():
        raise SystemExit(f"{db}: no MLflow store")
    exp_id = experiment_id(db, args.experiment)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    ui = subprocess.Popen([str(mlflow_bin), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                           "--port", str(args.port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    width, height = (int(v) for v in args.size.split(","))
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             f"--remote-debugging-port={args.debug_port}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(f"http://127.0.0.1:{args.port}/health", 90)
            wait_for(f"http://127.0.0.1:{args.debug_port}/json/version", 30)
            url = f"http://127.0.0.1:{args.port}/#/experiments/{exp_id}/runs"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            expanders = asyncio.run(screenshot(args.debug_port, url, args.out, args.wait, width, height))
        finally:
            browser.terminate()
            os.killpg(ui.pid, signal.SIGTERM)  # the UI server and the workers it started
            for process in (browser, ui):
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    if expanders == 0:
        raise SystemExit(f"{url}: no parent run with an expander on the page (screenshot in {args.out})")
    print(f"wrote {args.out}: {url}, {expanders} parent run(s), the first expanded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
