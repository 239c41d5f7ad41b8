"""Liu et al.'s learning phases, read off curves with a known outcome, and the phase diagram."""

import pytest
from matplotlib.patches import Rectangle

from modadd import plots
from modadd.grokking import GROKKING_MIN_DELAY, GROKKING_RATIO, PHASES, learning_phase


def curve(train_at: int | None, val_at: int | None, epochs: int = 1000, val_final: float | None = None) -> list[dict]:
    """Accuracy 0.1 until the given epoch, 1.0 from it (None: never); `val_final` overrides the last row."""
    rows = [{"epoch": e, "train/acc": 1.0 if train_at is not None and e >= train_at else 0.1,
             "val/acc": 1.0 if val_at is not None and e >= val_at else 0.1} for e in range(epochs)]  # 0-based, as logged
    if val_final is not None:
        rows[-1]["val/acc"] = val_final
    return rows


@pytest.mark.parametrize("rows, phase", [
    (curve(100, 120), "comprehension"),
    (curve(100, 503), "comprehension"),        # epoch 504 (from 1) is less than 5 times 101
    (curve(100, 504), "grokking"),             # 505 is 5 times as late
    (curve(1, GROKKING_MIN_DELAY), "comprehension"),  # 10 times as late but only a few epochs
    (curve(100, 900), "grokking"),
    (curve(100, None), "memorisation"),
    (curve(100, 120, val_final=0.5), "memorisation"),  # generalised, then lost it: the final accuracy counts
    (curve(None, None), "confusion"),
    (curve(None, 500), "confusion"),            # validation without the training set: still not fitted
    (curve(2, 12), "comprehension"),            # counted from 1, 13 is not 5 times 3 (from 0, 12 is 6 times 2)
    (curve(0, 10), "grokking"),                 # 11 is 11 times 1, and 10 epochs later
    (curve(100, 900) + [{"epoch": 1001, "train/acc": 1.0, "val/acc": float("nan")}], "grokking"),  # no validation in the last row
])
def test_phase_of_a_finished_run(rows, phase):
    assert GROKKING_RATIO == 5  # the README's rule
    assert learning_phase(rows, "ok") == phase
    assert learning_phase(rows, "wandb_failed") == phase  # the model is complete


@pytest.mark.parametrize("status", ["running", "incomplete", "interrupted", "failed", "unreadable", "not started"])
def test_unfinished_runs_have_no_phase(status):
    assert learning_phase(curve(100, 900), status) is None
    assert learning_phase([], "ok") is None


def test_a_diverged_run_is_its_own_phase():
    assert learning_phase(curve(100, 120), "diverged") == "diverged"


def test_phase_diagram_splits_each_cell_by_the_share_of_each_phase():
    rows = [{"wd": 0.1, "lr": 1, "phase": "grokking"}, {"wd": 0.1, "lr": 1, "phase": "grokking"},
            {"wd": 0.1, "lr": 1, "phase": "memorisation"},            # one cell, 3 seeds: 2/3 and 1/3
            {"wd": 1.0, "lr": 1, "phase": "comprehension"},
            {"wd": 0.1, "lr": 3, "phase": None},                      # unfinished
            {"wd": 1.0, "lr": 3, "phase": "confusion"}]
    ax = plots.phase_diagram(rows, "wd", "lr").axes[0]
    bars = [(round(r.get_x(), 3), round(r.get_width(), 3), r.get_y() + 0.5) for r in ax.patches
            if isinstance(r, Rectangle) and r.get_facecolor()[:3] != (0.88, 0.88, 0.88)]
    assert (-0.5, 0.667, 0) in bars and (0.167, 0.333, 0) in bars  # x = wd index, y = lr index
    assert (0.5, 1.0, 0) in bars and (0.5, 1.0, 1) in bars
    texts = [t.get_text() for t in ax.texts]
    assert "grok\n2/3" in texts and "memo\n1/3" in texts and "comp" in texts and "unfinished" in texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [ph for ph in PHASES]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "1"]
