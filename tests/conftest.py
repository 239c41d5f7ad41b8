import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A config that generalises fully in a few hundred cheap epochs (p=31, 90% of the pairs).
FAST_GROK = ["p=31", "train_fraction=0.9", "hidden=128", "lr=0.01", "weight_decay=1", "epochs=250"]


def run_script(script: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root, W&B offline, as a user would."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def wandb_inspect(job_dir: Path) -> dict:
    """What reached W&B, read back from the offline run with W&B's own tool."""
    run_dir = next((job_dir / "wandb").glob("offline-run-*"))
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
