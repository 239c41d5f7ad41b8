"""The analysis of a run or a sweep: the post's experiments, figures, tables, one HTML report.

`analyze(path, out)` finds the jobs under `path` (a sweep, a job or a weights file), analyses
every usable one in parallel worker processes (one torch thread each), and writes for each
job `analysis.json` and its figures, and for the whole `summary.csv`, sweep figures and
`report.html`. Jobs that cannot be analysed (failed, diverged, running, unreadable, no
epochs, not started) are listed with their status and reason, never fatal; a write that fails
(a full or read-only disk, an output path that is a file) is: `WriteError`, one line naming
the file and what it held. Every file is written atomically, so a failed write leaves none
half written (no empty PNG).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from modadd import clock_pizza, fourier, plots  # noqa: E402
from modadd.chunks import chunks  # noqa: E402
from modadd.mlp import construct, experiments  # noqa: E402
from modadd.data import labels, operation_pairs, split  # noqa: E402
from modadd.grokking import grokking_epochs, learning_phase  # noqa: E402
from modadd.files import WriteError, make_output_dir, save_atomic, write_atomic, write_csv  # noqa: E402
from modadd.report import Section, Table, save_figure, write_report  # noqa: E402
from modadd.runs import (  # noqa: E402
    Run, RunError, find_jobs, load_run, load_transformer_weights, load_weights, unstarted_jobs,
)
from modadd.transformer.analysis import analyze_transformer  # noqa: E402
from modadd.transformer.model import TransformerStack  # noqa: E402

log = logging.getLogger("modadd")


@dataclass
class Settings:
    """What the experiments sample: replacement orders, random-cosine sizes and draws."""

    orders: int = 5
    neurons: Sequence[int] = experiments.NEURONS
    draws: int = 5
    seed: int = 0
    example_neurons: int = 4
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))


def analyze(path: str | Path, out: str | Path | None = None, settings: Settings | None = None,
            progress: Callable[[str], None] = print) -> list[dict]:
    """Analyse everything under `path`; returns one summary row per job (analysed or not).

    Raises `RunError` (one line) if `path` is not a run, a sweep or a checkpoint, or if no job
    under it could be analysed; `WriteError` (one line) if the output cannot be written.
    """
    settings = settings or Settings()
    path = Path(path)
    jobs = find_jobs(path)
    out = Path(out) if out else (path.parent if path.is_file() else path) / "analysis"
    sweep = len(jobs) != 1 or jobs[0] != path
    runs = [load_run(j) for j in jobs]
    runs = in_sweep_order(runs + unstarted_jobs(path, runs))
    for run in runs:  # the experiments need a basis in which the task is addition
        if run.config.get("operation") == "x2xyy2" and run.family == "mlp" and run.analysable:
            run.status, run.analysable = "skipped", False
            run.reason = "operation=x2xyy2 has no basis in which it is addition: no cosine analysis"
    todo = [r for r in runs if r.analysable]
    units = [(r, k, _unit_dir(out, r, k, sweep)) for r in todo for k in range(r.members or 1)]
    skipped = ", ".join(f"{n} {status}" for status, n in Counter(r.status for r in runs if not r.analysable).items())
    progress(f"{len(runs)} job(s) under {path}: analysing {len(todo)}" + (f", skipping {skipped}" if skipped else ""))
    if units:
        make_output_dir(out, "the analysis")

    member_counts = {r.path: r.members or 1 for r in runs}
    results: dict[tuple[Path, int], dict] = {}
    curves: dict[int, list[dict]] = {}
    with _pool(settings.workers) as pool:
        needed = {(_basis_size(r), _activation(r)) for r, _, _ in units if r.family == "mlp"}
        futures = {pool.submit(random_cosine, n, act, settings): ("cosine", (n, act)) for n, act in needed}
        futures.update({pool.submit(analyze_member, r.path, k, d, settings): ("job", (r.path, k)) for r, k, d in units})
        done = 0
        for future in as_completed(futures):
            kind, key = futures[future]
            if kind == "cosine":
                try:
                    curves[key] = future.result()
                except (ValueError, RuntimeError, MemoryError) as err:
                    curves[key] = []
                    progress(f"random cosine networks at p={key[0]} ({key[1]}) failed: {str(err).splitlines()[0]}")
                continue
            done += 1
            try:
                results[key] = future.result()
                progress(f"[{done}/{len(units)}] {_name(key[0], key[1], member_counts[key[0]])}: done")
            except WriteError:  # the output's fault, not the job's: every other job would fail the same way
                for other in futures:
                    other.cancel()
                raise
            except (RunError, ValueError, RuntimeError) as err:
                results[key] = {"status": "unreadable", "reason": str(err).splitlines()[0]}
                progress(f"[{done}/{len(units)}] {_name(key[0], key[1], member_counts[key[0]])}: skipped ({results[key]['reason']})")

    for run, k, unit_dir in units:
        result = results[(run.path, k)]
        if result.get("status") == "analysed":
            if run.family == "mlp":
                result["random_cosine"] = curves[(_basis_size(run), _activation(run))]
            if result.get("random_cosine"):
                save_figure(plots.random_cosine_curve(result["random_cosine"]), unit_dir / "random_cosine.png")
            result["status"] = run.status
            write_atomic(unit_dir / "analysis.json", json.dumps(result, indent=2, allow_nan=True), what="the job's analysis")
    rows = summary_rows(runs, units, results)
    if not any(r["analysed"] for r in rows):
        reasons = "; ".join(f"{r['job']}: {r['status']} ({r['reason']})" for r in rows) or "no jobs"
        raise RunError(f"nothing to analyse under {path}: {reasons}")
    write_csv(out / "summary.csv", rows, what="the summary of every job")
    write_report(out / "report.html", f"modadd analysis: {path}", _report_sections(rows, runs, units, results, out, sweep))
    progress(f"wrote {out / 'report.html'} and {out / 'summary.csv'}")
    return rows


def analyze_member(job: Path, member: int, out: Path, settings: Settings) -> dict:
    """Everything about one trained network (one member of one job), figures saved to `out`."""
    torch.set_num_threads(1)
    run = load_run(job)
    if run.family == "transformer":
        return _analyze_transformer_member(run, member, out)
    fc1_all, fc2_all = load_weights(run)
    fc1, fc2 = fc1_all[member], fc2_all[member]
    if not (torch.isfinite(fc1).all() and torch.isfinite(fc2).all()):
        raise RunError("weights are not finite (diverged)")
    p, hidden = fc2.shape
    operation, activation = run.config.get("operation", "add"), _activation(run)
    answers = torch.cat([logits.argmax(-1) for _, logits in fourier.logit_chunks(fc1, fc2, activation)()])  # (p*p,)
    original = _split_accuracies(run, p, lambda rows: answers[rows])  # on the operation's own pairs and labels
    fc1, fc2, basis = fourier.addition_basis(fc1, fc2, operation)  # the task is now addition mod n
    fits = fourier.fit_neurons(fc1, fc2)
    stats = {k: v.item() for k, v in fourier.fit_statistics(fits).items()}
    replacement = experiments.replacement_curve(fc1, fc2, orders=settings.orders, seed=settings.seed, activation=activation)
    ablation = experiments.frequency_ablation(fc1, fc2, fits, activation)
    key_freqs = fourier.key_frequencies(fits)
    logits = fourier.logit_chunks(fc1, fc2, activation)  # in the addition basis: computed once where they fit
    algorithm = clock_pizza.clock_or_pizza(logits,
                                           partial(fourier.logits_from_embeddings, fc2=fc2, activation=activation),
                                           fc1[:, : fc2.shape[0]].T, fc1[:, fc2.shape[0] :].T)
    key_ablation = fourier.key_frequency_ablation(logits, fc2.shape[0], key_freqs)
    rows = _member_rows(run.metrics, member, (run.members or 1) > 1)
    result = {
        "job": str(job), "member": member, "family": "mlp", "p": p, "hidden": hidden, "status": "analysed",
        "operation": operation, "basis": basis, "activation": activation,
        **original,
        "basis_acc": experiments.accuracy_all_pairs(fc1, fc2, activation).item(),
        "fit": {
            "frac_same_freq": stats["frac_same_freq"],
            "phase_sum_error_median": stats["phase_sum_error_median"],
            "r2_mean": {"a": stats["r2_mean_a"], "b": stats["r2_mean_b"], "out": stats["r2_mean_out"]},
            "distinct_freqs": int(stats["distinct_freqs"]),
            "scale_ratio_mean": stats["scale_ratio_mean"],
            "key_freqs": key_freqs.tolist(),
        },
        "key_frequency_ablation": key_ablation,
        "clock_pizza": algorithm,
        "replacement": [{k: r[k] for k in ("fraction", "acc_mean", "acc_std")} for r in replacement],
        "frequency_ablation": ablation,
        "grokking": grokking_epochs(rows),
        "epochs": len(rows),
    }
    chosen = _example_neurons(fits, settings.example_neurons)
    figures = {
        "grokking_curves": plots.grokking_curves(rows) if rows else None,
        "frequency_agreement": plots.frequency_agreement(fits),
        "phase_sum": plots.phase_sum(fits),
        "frequency_histogram": plots.frequency_histogram(fits.out.freq, p),
        "replacement": plots.replacement_curve(replacement),
        "frequency_ablation": plots.frequency_ablation(ablation, baseline=result["basis_acc"]),
        "key_frequency_ablation": plots.key_frequency_ablation(key_ablation),
        "activation_heatmaps": plots.activation_heatmaps(fc1, fc2, chosen, activation),
        "neuron_weights": plots.neuron_weights(fc1, fc2, fits, chosen, folded=True),
        "weight_similarity": plots.weight_similarity(fc1, fc2),
        "tsne_kmeans": plots.tsne_kmeans(fc1, fits, clusters=min(10, hidden), seed=settings.seed) if hidden >= 4 else None,
    }
    for name, fig in figures.items():
        if fig is not None:
            save_figure(fig, out / f"{name}.png")
    write_csv(out / "neurons.csv", _neuron_rows(fits), what="the neurons' fits")
    return result


def analyze_construction(name: str, p: int, out: str | Path, settings: Settings, activation: str | None = None,
                         progress: Callable[[str], None] = print) -> list[dict]:
    """Accuracy over all p*p pairs of hand-built networks (`construct.CONSTRUCTIONS`) against
    their width N, `settings.draws` random draws each; with the fits of the first draw.

    Writes to `out`: construction.csv (one row per N), accuracy_vs_neurons.png, and the first
    draw of each N as `model_N{n}.pt` (the seed's state_dict plus `hyper_parameters` naming p,
    hidden and the activation), which `analyze.py` analyses and `train.py init=...` starts from.
    Returns the rows: neurons, activation, acc_mean, acc_std, acc_min, acc_max, and the first
    draw's frac_same_freq and phase_sum_error_median.
    """
    activation = activation or construct.CONSTRUCTIONS[name][1]
    out = Path(out)
    make_output_dir(out, "the constructions")
    rows = []
    draws = experiments.construction_draws(name, p, settings.neurons, settings.draws, settings.seed, activation)
    for n, fc1, fc2, acc in draws:
        stats = fourier.fit_statistics(fourier.fit_neurons(fc1[0], fc2[0]))
        hp = {"p": p, "hidden": n, "activation": activation, "operation": "add", "construction": name, "seed": settings.seed}
        state = construct.to_mlp(fc1[0], fc2[0], activation).state_dict()
        save_atomic(partial(torch.save, {"state_dict": state, "hyper_parameters": hp}), out / f"model_N{n}.pt",
                    f"the network of {n} neurons")
        rows.append({"neurons": n, "activation": activation, "acc_mean": acc.mean().item(),
                     "acc_std": acc.std(correction=0).item(), "acc_min": acc.min().item(), "acc_max": acc.max().item(),
                     "frac_same_freq": stats["frac_same_freq"].item(),
                     "phase_sum_error_median": stats["phase_sum_error_median"].item()})
    write_csv(out / "construction.csv", rows, what="the accuracies of the constructions")
    save_figure(plots.random_cosine_curve(rows, name=f"{name} ({activation})"), out / "accuracy_vs_neurons.png")
    progress(f"{name} construction, p={p}, {activation} activation, {settings.draws} draw(s) per N, seed {settings.seed}")
    progress(f"{'N':>6} {'acc mean':>9} {'acc std':>8} {'min':>8} {'max':>8}")
    for r in rows:
        progress(f"{r['neurons']:>6} {r['acc_mean']:>9.4f} {r['acc_std']:>8.4f} {r['acc_min']:>8.4f} {r['acc_max']:>8.4f}")
    progress(f"wrote {out / 'construction.csv'}, {out / 'accuracy_vs_neurons.png'} and model_N*.pt")
    return rows


def _analyze_transformer_member(run: Run, member: int, out: Path) -> dict:
    """One member of a transformer job: `modadd.transformer.analysis` plus the accuracies and curves."""
    weights = {name: w[member : member + 1] for name, w in load_transformer_weights(run).items()}
    if not all(torch.isfinite(w).all() for w in weights.values()):
        raise RunError("weights are not finite (diverged)")
    net = TransformerStack(weights)
    p, operation = net.p, run.config.get("operation", "add")
    rows = _member_rows(run.metrics, member, (run.members or 1) > 1)
    result, figures = analyze_transformer(net, rows, operation)

    @torch.no_grad()
    def predict(pair_rows: torch.Tensor) -> torch.Tensor:
        a, b = pair_rows // p, pair_rows % p
        return torch.cat([net(a[s], b[s])[0].argmax(-1) for s in chunks(len(pair_rows), net.row_bytes())])

    result = {"job": str(run.path), "member": member, **result, "p": p, **net.shape, "status": "analysed",
              "operation": operation, "loss": run.config.get("loss", "cross_entropy"), **_split_accuracies(run, p, predict),
              "grokking": grokking_epochs(rows), "epochs": len(rows)}
    figures["grokking_curves"] = plots.grokking_curves(rows) if rows else None
    for name, fig in figures.items():
        if fig is not None:
            save_figure(fig, out / f"{name}.png")
    return result


def random_cosine(p: int, activation: str, settings: Settings) -> list[dict]:
    """The post's experiment 3 at this p with this activation (once per sweep, p and activation)."""
    torch.set_num_threads(1)
    curve = experiments.construction_curve(
        "cosine", p, neurons=settings.neurons, draws=settings.draws, seed=settings.seed, activation=activation
    )
    return [{k: r[k] for k in ("neurons", "acc_mean", "acc_std")} for r in curve]


def summary_rows(runs: list[Run], units: list, results: dict) -> list[dict]:
    """One row per job member: overrides as columns, final metrics, grokking, fit figures, status."""
    rows = []
    analysed = {(r.path, k): d for r, k, d in units}
    for run in runs:
        per_member = (run.path, 0) in analysed and (run.members or 1) > 1
        for k in range(run.members) if per_member else [0]:
            res = results.get((run.path, k), {})
            curve = _member_rows(run.metrics, k, per_member)
            final = curve[-1:] or [{}]
            replaced_90 = next((r["acc_mean"] for r in res.get("replacement", []) if abs(r["fraction"] - 0.9) < 1e-9), None)
            keys = res.get("key_frequencies", res.get("fit", {}).get("key_freqs"))
            ablation = {r["ablation"]: r["acc"] for r in res.get("key_frequency_ablation", [])}
            phases = res.get("phases", {})
            rows.append({
                "job": run.path.name + (f"/m{k}" if per_member else ""),
                "family": run.family,
                **run.overrides,
                "status": res.get("status") if res.get("status") == "unreadable" else run.status,
                "reason": res.get("reason", run.reason),
                "analysed": "reason" not in res and bool(res),
                "p": run.p, "hidden": run.hidden,
                "operation": run.config.get("operation", "add"), "activation": _activation(run),
                "epochs": len(run.metrics),
                **{key: final[0].get(key) for key in ("train/loss", "train/acc", "val/loss", "val/acc")},
                "full_acc": res.get("full_acc"),
                **{f"grokking_{k2}": v for k2, v in res.get("grokking", grokking_epochs(curve)).items()},
                "phase": _phase(run, curve, per_member),
                "frac_same_freq": res.get("fit", {}).get("frac_same_freq"),
                "phase_sum_error_median": res.get("fit", {}).get("phase_sum_error_median"),
                "r2_mean_out": res.get("fit", {}).get("r2_mean", {}).get("out"),
                "distinct_freqs": res.get("fit", {}).get("distinct_freqs"),
                "replacement_acc_0.9": replaced_90,
                "key_frequencies": " ".join(map(str, keys)) if keys is not None else None,
                "n_key_frequencies": len(keys) if keys is not None else None,
                "acc_key_frequencies_only": ablation.get("keep only the key frequencies"),
                "acc_key_frequencies_removed": ablation.get("remove all key frequencies"),
                **{key: res.get("clock_pizza", {}).get(key) for key in ("algorithm", "gradient_symmetricity", "distance_irrelevance")},
                **{f"phase_{name}": phases.get(name) for name in ("memorisation_end", "circuit_formation_end", "cleanup_end")},
            })
    return rows


def _phase(run: Run, curve: list[dict], per_member: bool) -> str | None:
    """The row's learning phase; for a row of several members (a stacked job not analysed member by
    member), theirs if they all share one, else None."""
    if per_member or (run.members or 1) == 1:
        return learning_phase(curve, run.status)
    phases = {learning_phase(_member_rows(run.metrics, k, True), run.status) for k in range(run.members)}
    return phases.pop() if len(phases) == 1 else None


def in_sweep_order(runs: list[Run]) -> list[Run]:
    """The jobs ordered by their overrides' values (numerically where every job's value of that key is a
    number: hidden 64, 100, 256, not the dir names' text order 100, 256, 64), the keys in the order of
    Hydra's job names (its override dirname sorts the `key=value` items); jobs without a key come last."""
    keys = sorted({k for r in runs for k in r.overrides}, key=lambda k: f"{k}=")
    numeric = {k for k in keys if all(_number(r.overrides[k]) is not None for r in runs if k in r.overrides)}

    def order(run: Run) -> list[tuple[bool, float | str]]:
        values = run.overrides
        return [(False, _number(values[k]) if k in numeric else values[k]) if k in values else (True, "")
                for k in keys] + [(False, run.path.name)]

    return sorted(runs, key=order)


def _activation(run: Run) -> str:
    return run.config.get("activation", "relu")


def _basis_size(run: Run) -> int:
    """n of the addition basis: p - 1 for mul / div (discrete logs of the non-zero residues)."""
    return run.p - 1 if run.config.get("operation") in ("mul", "div") else run.p


def _split_accuracies(run: Run, p: int, predict: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Accuracy over all the operation's pairs, and over the run's train / validation split
    (recomputed from its p, train_fraction and seed); `predict(rows)` answers the pairs of
    rows a*p + b."""
    cfg = run.config
    operation = cfg.get("operation", "add")
    a, b = operation_pairs(p, operation)
    right = predict(a * p + b) == labels(a, b, p, operation)
    full = right.float().mean().item()
    if not all(k in cfg for k in ("train_fraction", "seed")):
        return {"full_acc": full, "train_acc": None, "val_acc": None}
    train, val = split(p, cfg["train_fraction"], cfg["seed"], operation)
    return {"full_acc": full, "train_acc": right[train].float().mean().item(), "val_acc": right[val].float().mean().item()}


def _member_rows(metrics: list[dict], member: int, stacked: bool) -> list[dict]:
    """A member's own curve (its `_m{k}` columns) under the plain names."""
    if not stacked:
        return metrics
    suffix = f"_m{member}"
    return [{"epoch": r["epoch"], **{k[: -len(suffix)]: v for k, v in r.items() if k.endswith(suffix)}} for r in metrics]


def _example_neurons(fits: fourier.NeuronFits, n: int) -> list[int]:
    """The best-fitted neurons, one per frequency first, so the examples show distinct frequencies."""
    order = torch.argsort(fits.a.r2 + fits.b.r2 + fits.out.r2, descending=True).tolist()
    seen, chosen = set(), []
    for i in order:
        if fits.out.freq[i].item() not in seen:
            seen.add(fits.out.freq[i].item())
            chosen.append(i)
    return (chosen + [i for i in order if i not in chosen])[:n]


def _neuron_rows(fits: fourier.NeuronFits) -> list[dict]:
    columns = {k: v.tolist() for k, v in fits.table().items()}
    return [{"neuron": n, **{k: v[n] for k, v in columns.items()}} for n in range(len(fits.out.freq))]


def _report_sections(rows: list[dict], runs: list[Run], units: list, results: dict, out: Path, sweep: bool) -> list[Section]:
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "analysed"))
    job_sections, shared = [], {}
    for run, k, unit_dir in units:
        res = results[(run.path, k)]
        if "reason" in res:
            continue
        text, tables = _transformer_text(res) if res.get("family") == "transformer" else _mlp_text(res)
        pngs = sorted(unit_dir.glob("*.png"))
        cosine = unit_dir / "random_cosine.png"
        if len(units) > 1 and cosine in pngs:  # one experiment per basis and activation: shown once, in the summary
            pngs.remove(cosine)
            caption = (f"random cosine networks, addition mod {_basis_size(run)}, {_activation(run)} (one experiment, "
                       "shared by every job with this basis and activation)")
            shared.setdefault(caption, str(cosine))
        figures = [(f.stem.replace("_", " "), str(f)) for f in pngs]
        job_sections.append(Section(_name(run.path, k, run.members or 1), text=text, tables=tables, figures=figures))
    phases = Counter(r["phase"] for r in rows if r["phase"])
    phase_text = f" Learning phases: {', '.join(f'{n} {ph}' for ph, n in phases.most_common())}." if phases else ""
    summary = Section("Summary", text=f"{len(rows)} job(s); {sum(r['analysed'] for r in rows)} analysed.{phase_text}",
                      tables=[Table(columns, [[r.get(c) for c in columns] for r in rows])],
                      figures=(_sweep_figures(rows, runs, out) if sweep else []) + list(shared.items()))
    side_by_side = [_side_by_side(rows)] if len({r["family"] for r in rows if r["analysed"]}) > 1 else []
    return [summary, *side_by_side, *job_sections]


def _mlp_text(res: dict) -> tuple[str, list[Table]]:
    fit = res["fit"]
    text = (f"MLP: p = {res['p']}, hidden = {res['hidden']}, operation {res['operation']} (fits and experiments in the basis: "
            f"{res['basis']}), status {res['status']}. Accuracy: train {_pct(res['train_acc'])}, "
            f"validation {_pct(res['val_acc'])}, all pairs {_pct(res['full_acc'])}. "
            f"{_pct(fit['frac_same_freq'])} of neurons have one frequency for a, b and out; median phase-sum error "
            f"{fit['phase_sum_error_median']:.3f} rad; {fit['distinct_freqs']} distinct frequencies; "
            f"mean R² a/b/out {fit['r2_mean']['a']:.3f}/{fit['r2_mean']['b']:.3f}/{fit['r2_mean']['out']:.3f}."
            f"{_clock_pizza_text(res)}")
    tables = [Table(["fraction replaced", "acc mean", "acc std"], [[r["fraction"], r["acc_mean"], r["acc_std"]] for r in res["replacement"]]),
              Table(["random cosine neurons", "acc mean", "acc std"], [[r["neurons"], r["acc_mean"], r["acc_std"]] for r in res["random_cosine"]]),
              _ablation_table(res["key_frequency_ablation"])]
    return text, tables


def _clock_pizza_text(res: dict) -> str:
    if "clock_pizza" not in res:
        return ""
    cp = res["clock_pizza"]
    return (f" Clock or pizza (Zhong et al., README): distance irrelevance {cp['distance_irrelevance']:.3f}, gradient "
            f"symmetricity {cp['gradient_symmetricity']:.3f}: a {cp['algorithm']}.")


def _ablation_table(rows: list[dict]) -> Table:
    return Table(["ablation of the logits (key frequencies)", "acc", "loss"], [[r["ablation"], r["acc"], r["loss"]] for r in rows])


def _transformer_text(res: dict) -> tuple[str, list[Table]]:
    phases = res["phases"]
    attention = res["attention_from_equals"]
    val_loss = "the validation loss" + (" (StableMax's; the restricted loss is softmax's)" if res.get("loss") == "stablemax" else "")
    text = (f"Transformer: p = {res['p']}, d_model = {res['d_model']}, {res['n_heads']} heads of {res['d_head']}, "
            f"d_mlp = {res['d_mlp']}, operation {res['operation']}, status {res['status']}. Accuracy: train "
            f"{_pct(res['train_acc'])}, validation {_pct(res['val_acc'])}, all pairs {_pct(res['full_acc'])}. "
            f"Key frequencies (from the MLP neurons): {', '.join(map(str, res['key_frequencies'])) or 'none'}; "
            f"{_pct(res['neurons_in_key_frequencies'])} of the neurons have most of their variance in one of them; "
            f"Gini of the embedding's Fourier norms {res['fourier_gini']:.3f}. Attention from \"=\": "
            f"{_pct(attention['a'])} to a, {_pct(attention['b'])} to b. Phases (README): memorisation ends at epoch "
            f"{phases['memorisation_end']}, circuit formation at {phases['circuit_formation_end']}, cleanup at "
            f"{phases['cleanup_end']}; the restricted loss fell below 1 at epoch {phases['restricted_loss_below_1']}, "
            f"{val_loss} at {phases['val_loss_below_1']}.{_clock_pizza_text(res)}")
    tables = [Table(["key frequency", "neurons", "mean share of variance"],
                    [[c["freq"], c["neurons"], c["explained_mean"]] for c in res["neuron_clusters"]])]
    if "key_frequency_ablation" in res:
        tables.append(_ablation_table(res["key_frequency_ablation"]))
    return text, tables


def _side_by_side(rows: list[dict]) -> Section:
    """The post's question for a sweep that holds both families: the same algorithm?"""
    columns = ["job", "family", "key_frequencies", "n_key_frequencies", "frac_same_freq", "phase_sum_error_median",
               "acc_key_frequencies_only", "acc_key_frequencies_removed", "grokking_train_epoch", "grokking_val_epoch",
               "val/acc"]
    analysed = sorted((r for r in rows if r["analysed"]), key=lambda r: r["family"])  # stable: sweep order within a family
    text = ("Which frequencies each network computes with, and how. For the MLP, the key frequencies are those of "
            "at least 5% of its neurons' cosine fits, and its algorithm shows as the phase-sum rule (each neuron's "
            "output phase is the sum of its input phases: a small median error). For the transformer they are the "
            "frequencies its MLP neurons concentrate on (Nanda et al.'s criterion), and its algorithm (rotations by "
            "the key frequencies, read out as cos(w(a+b-c))) shows in the logits. For both, the accuracy over all "
            "pairs with only the key frequencies' components of the logits kept, and with them removed: a network "
            "that computes with its key frequencies alone keeps its accuracy in the first and loses it in the second.")
    return Section("MLP versus transformer", text=text, tables=[Table(columns, [[r.get(c) for c in columns] for r in analysed])])


def _sweep_figures(rows: list[dict], runs: list[Run], out: Path) -> list[tuple[str, str]]:
    """Final validation accuracy and grokking epoch over the swept axes (a swept seed is repeats of
    each cell, not an axis), the phase diagram of a 2-axis sweep; all curves overlaid."""
    axes = [k for k in dict.fromkeys(k for r in runs for k in r.overrides) if len({r.overrides.get(k) for r in runs}) > 1]
    if len(axes) > 1 and "seed" in axes:
        axes.remove("seed")
    numbers = {a for a in axes if all(_number(r.get(a)) is not None for r in rows if r.get(a) is not None)}
    numeric = [{**r, **{a: _number(r.get(a)) for a in numbers}} for r in rows]  # categorical axes stay text
    figures = {}
    if len(axes) == 2 and any(r["phase"] for r in rows):
        figures[f"learning phase over {axes[0]} x {axes[1]} (README: phase diagrams)"] = plots.phase_diagram(numeric, *axes)
    for value in ("val/acc", "grokking_val_epoch"):
        if len(axes) == 2:
            figures[f"{value} over {axes[0]} x {axes[1]}"] = plots.sweep_heatmap(numeric, axes[0], axes[1], value)
        elif axes:
            figures[f"{value} over {axes[0]}"] = plots.sweep_lines(numeric, axes[0], value, hue=axes[1] if len(axes) > 1 else None)
    curves = {r.path.name: r.metrics for r in runs if r.metrics and (r.members or 1) == 1}
    if curves:
        color_by = {r.path.name: _number(r.overrides.get(axes[0])) for r in runs} if axes else None
        if color_by and any(v is None for v in color_by.values()):
            color_by = None
        figures["validation accuracy of every job"] = plots.overlaid_curves(curves, color_by)
    saved = []
    for i, (caption, fig) in enumerate(figures.items()):
        path = out / f"sweep_{i}.png"
        save_figure(fig, path)
        saved.append((caption, str(path)))
    return saved


def _unit_dir(out: Path, run: Run, member: int, sweep: bool) -> Path:
    base = out / run.path.name if sweep else out
    return base / f"m{member}" if (run.members or 1) > 1 else base


def _name(job: Path, member: int, members: int) -> str:
    return job.name + (f" / member {member}" if members > 1 else "")


def _number(value: object) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent has run torch (reading checkpoints), and a forked child can
    # hang in an OpenMP pool its parent started; fresh workers cost a few seconds of imports
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_end_with, initargs=(os.getpid(),))


def _end_with(parent: int) -> None:
    """A worker ends when analyze.py does, however it ends: a killed parent (kill, a scheduler)
    left its workers computing on for an hour, holding the CPUs (Linux: the kernel's parent-death
    signal)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
