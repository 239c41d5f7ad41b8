"""Memory bounded at any p: every all-pairs computation runs in slices (p*p pairs times p logits
is 13.5 GB at p = 1500), and a config whose training itself cannot fit is refused up front."""

import os
import resource
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, run_script
from modadd.config import CONF_DIR, ConfigError, validate

# runs a script as `python script args` would, then prints its peak virtual memory (VmPeak)
PEAK = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write(next(l for l in open("/proc/self/status") if l.startswith("VmPeak"))))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def limited(limit: int, script: str, *args: str) -> subprocess.CompletedProcess:
    """`python script args` under an address-space limit of `limit` bytes (`ulimit -v`), W&B off."""
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-c", PEAK, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, preexec_fn=set_limit, timeout=600)


def vm_peak(proc: subprocess.CompletedProcess) -> int:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(next(line for line in proc.stderr.splitlines() if line.startswith("VmPeak")).split()[1]) * 1024


@pytest.mark.slow
def test_train_and_analyze_at_a_large_p_need_no_more_memory_than_at_a_small_one(tmp_out):
    # A job at p=7 sets the baseline (torch, Lightning, threads). At p=400 the (p*p, p) logits
    # are 256 MB, and the unchunked measures held several copies (the train.py run peaked 800 MB
    # above the baseline, analyze.py failed under the limit below): sliced, both fit in 500 MB more.
    baseline = vm_peak(limited(2**40, "train.py", "p=7", "hidden=8", "epochs=2", "logger=csv", f"hydra.run.dir={tmp_out / 'small'}"))
    limit = baseline + 500 * 2**20
    run = tmp_out / "large"
    train = limited(limit, "train.py", "p=400", "hidden=8", "epochs=2", "logger=csv", f"hydra.run.dir={run}")
    assert vm_peak(train) < limit and (run / "model.pt").exists()
    analysis = limited(limit, "analyze.py", str(run), "--neurons", "16", "--draws", "1", "--orders", "1")
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert "done" in analysis.stdout and (run / "analysis" / "report.html").exists()


def job_config(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_a_config_whose_training_cannot_fit_is_refused_naming_p_and_the_memory():
    with pytest.raises(ConfigError, match=r"^p=200000 is too large: training holds about 3520\.0 GB for its 40000000000 pairs alone, "
                                          r".* is [0-9.]+ GB: p must be at most about [0-9]+ here$"):
        validate(job_config("p=200000"))


def test_a_full_batch_that_cannot_fit_names_the_largest_batch_that_does(tmp_out):
    # an 8 GB address-space limit, as `ulimit -v 8000000` sets: the one-line error, before any work
    run = tmp_out / "run"
    proc = limited(8_000_000 * 1024, "train.py", "p=1500", "batch_size=null", f"hydra.run.dir={run}")
    assert proc.returncode == 1 and not run.exists()
    line, = [line for line in proc.stderr.splitlines() if line and not line.startswith("VmPeak")]
    assert line.startswith("error: batch_size=null (full batch) is too large at p=1500: a minibatch of 1800000 pairs holds about ")
    assert "the address-space limit (ulimit -v) is 8.2 GB: batch_size must be at most " in line
    largest = int(line.rsplit(" ", 2)[1])
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8_000_000 * 1024, old[1]))
    try:
        validate(job_config("p=1500", f"batch_size={largest}"))  # the largest it names is accepted
        with pytest.raises(ConfigError, match="batch_size=.* is too large"):
            validate(job_config("p=1500", f"batch_size={largest + 1}"))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)
