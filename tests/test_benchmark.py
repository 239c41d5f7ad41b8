"""The benchmark runs as benchmarks/README.md says and prints the tables it quotes (no timing is
asserted: figures are measured and written down, not tested)."""

import re

import pytest

from conftest import run_script


@pytest.mark.slow
def test_bench_train_times_the_seed_notebook_and_train_py_each_as_its_own_process():
    out = run_script("benchmarks/bench_train.py", "--rounds", "1", "--short", "2", "--long", "4", timeout=600).stdout
    number = r"-?[0-9.]+ \(-?[0-9.]+--?[0-9.]+\)"  # median (min-max); 2 epochs apart, the noise can be negative
    for command in ("python benchmarks/seed_notebook.py E", "python train.py epochs=E"):
        assert re.search(rf"\| {re.escape(command)} \| {number} \| {number} \|", out), out
    assert re.search(r"speed-up per epoch \(seed / train.py, per round\): -?[0-9.]+ ", out), out


def test_seed_notebook_trains_as_the_notebook_prints():
    out = run_script("benchmarks/seed_notebook.py", "2", timeout=120).stdout.splitlines()
    assert out[0] == "2" and out[-1].startswith("Epoch: 1 | Train loss: ") and "Validation accuracy: " in out[-1]
