"""analyze.py end to end: a sweep with broken jobs, a hand-built network, nothing to analyse."""

import csv
import json
import math
import re
import shutil

import pytest
import torch

from modadd.mlp.construct import cosine_network
from modadd.mlp.experiments import accuracy_all_pairs
from modadd.mlp.model import MLP

from conftest import needs_chromium, rendered_dom, run_script

pytestmark = pytest.mark.slow
QUICK = ["--orders", "2", "--draws", "2", "--neurons", "16,64"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 4-job sweep (one job with 2 members); then two jobs are broken on purpose."""
    root = tmp_path_factory.mktemp("sweep") / "sweep"
    run_script("train.py", "-m", "hidden=16,24", "members=1,2", "p=13", "epochs=20", "logger=csv",
               f"hydra.sweep.dir={root}")
    return root


def test_sweep_analysis_reports_broken_jobs_and_analyses_the_rest(sweep, tmp_out):
    root = tmp_out / "sweep"
    shutil.copytree(sweep, root)
    corrupt = root / "epochs=20,hidden=24,members=1,p=13"
    (corrupt / "model.pt").unlink()
    ckpt = corrupt / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    empty = root / "epochs=20,hidden=24,members=2,p=13"
    (empty / "summary.json").unlink()
    (empty / "metrics.csv").write_text("")

    proc = run_script("analyze.py", str(root), *QUICK)
    out = root / "analysis"
    assert "[" in proc.stdout and "report.html" in proc.stdout  # progress lines
    with open(out / "summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows[corrupt.name]["status"] == "unreadable" and rows[corrupt.name]["analysed"] == "False"
    assert rows[empty.name]["status"] == "incomplete" and "no epochs" in rows[empty.name]["reason"]
    ok = "epochs=20,hidden=16,members=1,p=13"
    assert rows[ok]["status"] == "ok" and rows[ok]["analysed"] == "True" and rows[ok]["hidden"] == "16"
    assert rows[ok]["operation"] == "add" and rows[ok]["activation"] == "relu"  # named even when not swept
    assert {f"epochs=20,hidden=16,members=2,p=13/m{k}" for k in (0, 1)} <= set(rows)
    assert rows[ok]["phase"] == "confusion" and rows[empty.name]["phase"] == ""  # 20 epochs fit nothing; unfinished
    assert rows[ok]["algorithm"] in ("clock", "pizza", "neither") and float(rows[ok]["gradient_symmetricity"]) > 0.99

    result = json.loads((out / ok / "analysis.json").read_text())
    assert set(result["clock_pizza"]) == {"gradient_symmetricity", "distance_irrelevance", "algorithm"}
    for key in ("p", "hidden", "train_acc", "val_acc", "full_acc", "fit", "replacement", "random_cosine", "grokking", "status"):
        assert key in result, key
    assert set(result["fit"]) >= {"frac_same_freq", "phase_sum_error_median", "r2_mean", "distinct_freqs"}
    assert set(result["fit"]["r2_mean"]) == {"a", "b", "out"}
    assert result["replacement"][0]["fraction"] == 0 and result["replacement"][0]["acc_mean"] == result["full_acc"]
    assert [r["neurons"] for r in result["random_cosine"]] == [16, 64]
    assert (out / ok / "grokking_curves.png").exists() and (out / ok / "tsne_kmeans.png").exists()
    members = out / "epochs=20,hidden=16,members=2,p=13"
    assert (members / "m0" / "analysis.json").exists() and (members / "m1" / "analysis.json").exists()
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 10 and corrupt.name in html
    assert "learning phase over hidden x members" in html and "Clock or pizza" in html


@needs_chromium
def test_sweep_report_renders_in_chromium_with_every_image(sweep, tmp_out):
    root = tmp_out / "sweep"
    shutil.copytree(sweep, root)
    run_script("analyze.py", str(root), *QUICK)
    report = root / "analysis" / "report.html"
    dom = rendered_dom(report, tmp_out)
    assert 'data-probed="yes"' in dom and 'data-external=""' in dom
    loaded = re.findall(r'<img[^>]*data-loaded="(\d+)"', dom)
    assert len(loaded) == report.read_text().count("<img") >= 10
    assert all(int(width) > 100 for width in loaded)  # every figure decoded


def test_hand_built_cosine_network_gives_back_the_fits_it_was_built_from(tmp_out):
    p, hidden = 23, 256
    g = torch.Generator().manual_seed(0)
    freq = torch.randint(1, p // 2 + 1, (hidden,), generator=g)
    phase_a, phase_b = (torch.rand(2, hidden, generator=g) * 2 - 1) * math.pi
    fc1, fc2 = cosine_network(p, freq, phase_a, phase_b)
    mlp = MLP(p, hidden)
    mlp.load_state_dict({"fc1.weight": fc1, "fc2.weight": fc2})
    torch.save(mlp.state_dict(), tmp_out / "hand_built.pt")

    run_script("analyze.py", str(tmp_out / "hand_built.pt"), *QUICK)
    result = json.loads((tmp_out / "analysis" / "analysis.json").read_text())
    assert result["fit"]["frac_same_freq"] == 1.0
    assert result["fit"]["phase_sum_error_median"] < 1e-4
    assert all(v > 0.9999 for v in result["fit"]["r2_mean"].values())
    own = accuracy_all_pairs(fc1, fc2).item()
    assert result["full_acc"] == pytest.approx(own)
    assert all(r["acc_mean"] == pytest.approx(own, abs=1e-6) for r in result["replacement"])  # the fits are exact
    with open(tmp_out / "analysis" / "neurons.csv") as f:
        assert [int(r["freq_out"]) for r in csv.DictReader(f)] == freq.tolist()


def test_nothing_to_analyse_is_a_one_line_error(tmp_out):
    bad = tmp_out / "garbage.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_script("analyze.py", str(bad), check=False)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "nothing to analyse" in proc.stderr
    proc = run_script("analyze.py", str(tmp_out / "missing"), check=False)
    assert proc.returncode != 0 and "is not a run, a sweep or a checkpoint" in proc.stderr
