import json
import shutil
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A config that generalises fully in a few hundred cheap epochs (p=31, 90% of the pairs).
FAST_GROK = ["p=31", "train_fraction=0.9", "hidden=128", "lr=0.01", "weight_decay=1", "epochs=250"]


def run_script(script: str, *args: str, check: bool = True, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root, W&B offline, as a user would (`env`:
    more environment variables)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def as_in_a_terminal() -> None:
    """`preexec_fn` of a process a test sends Ctrl-C (SIGINT) to: SIGINT at its default, as for a
    command typed in a terminal. A test run in the background (`pytest &`) starts its children
    ignoring SIGINT, and train.py, like Python, keeps a SIGINT it was started ignoring ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wandb_inspect(job_dir: Path, run_dir: Path | None = None) -> dict:
    """What reached W&B, read back from the (first, or given) offline run with W&B's own tool."""
    run_dir = run_dir or next((job_dir / "wandb").glob("offline-run-*"))
    summary = json.loads(subprocess.run(
        ["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True, text=True, check=True).stdout)
    records = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, check=True).stdout
    run = next(json.loads(line)["run"] for line in records.splitlines() if '"type":"run"' in line)
    return {**summary, "run": run}


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path


# ---------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Runs first in <head>, before the report's Content-Security-Policy, which then still applies to
# everything after it (images included). On load it records on each <img> whether it decoded
# (its naturalWidth, 0 if not) and on <body> every resource fetched that was not a data: URI.
PROBE = ("<script>addEventListener('load', () => {"
         "for (const img of document.images) img.dataset.loaded = img.complete ? img.naturalWidth : 0;"
         "document.body.dataset.external = performance.getEntriesByType('resource')"
         ".map(e => e.name).filter(n => !n.startsWith('data:')).join(' ');"
         "document.body.dataset.probed = 'yes';});</script>")


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"headless Chromium not found ({CHROMIUM}); install it with `apt-get install chromium` to render reports")


def rendered_dom(page: Path, tmp: Path) -> str:
    """The DOM of `page` after Chromium loaded it, with the PROBE's attributes: `data-loaded`
    on each <img> (its decoded width) and `data-external` on <body> (non-data: fetches)."""
    probed = tmp / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    return chromium(tmp, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
                    "--dump-dom", probed.as_uri()).stdout
