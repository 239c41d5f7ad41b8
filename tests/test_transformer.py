"""Nanda's transformer: its forward and gradients against a plain reference, TransformerLens's
HookedTransformer on the saved weights, and train.py with model=transformer."""

import csv
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from modadd.config import ConfigError, preflight
from modadd.data import all_pairs, labels
from modadd.files import read_metrics
from modadd.transformer.model import TL_KEYS, TransformerStack
from modadd.transformer.analysis import key_frequency_ablation
from modadd.transformer.progress import neuron_spectrum, progress_measures

from conftest import needs_chromium, rendered_dom, run_script, wandb_inspect

P = 13
SHAPE = dict(d_model=16, n_heads=2, d_head=8, d_mlp=32)
SMALL = ["model=transformer", "p=13", "d_model=16", "n_heads=2", "d_head=8", "d_mlp=32"]


def reference_logits(w: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One member, written out as the paper describes it: all three positions, causal attention
    with scores q.k / sqrt(d_head), residual stream, ReLU MLP, logits read at the last position."""
    p = w["W_U"].shape[-1]
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (B, 3)
    x = w["W_E"][tokens] + w["W_pos"]  # (B, 3, d_model)
    q = torch.einsum("bpd,hde->bhpe", x, w["W_Q"])
    k = torch.einsum("bpd,hde->bhpe", x, w["W_K"])
    v = torch.einsum("bpd,hde->bhpe", x, w["W_V"])
    scores = q @ k.transpose(-1, -2) / math.sqrt(w["W_Q"].shape[-1])  # (B, h, 3, 3)
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, -math.inf).softmax(-1)
    x = x + torch.einsum("bhpe,hed->bpd", pattern @ v, w["W_O"])
    x = x + torch.relu(x @ w["W_in"]) @ w["W_out"]
    return (x @ w["W_U"])[:, -1]


def test_forward_and_gradients_equal_a_plain_reference():
    net = TransformerStack.init(P, **SHAPE, seeds=[3, 4]).double()
    a, b = torch.randint(0, P, (2, 50)), torch.randint(0, P, (2, 50))
    y = labels(a, b, P)
    logits = net(a, b)
    F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
    for k in range(2):
        w = {name: getattr(net, name)[k].detach().clone().requires_grad_() for name in TL_KEYS}
        ref = reference_logits(w, a[k], b[k])
        torch.testing.assert_close(logits[k], ref, rtol=1e-10, atol=1e-10)
        F.cross_entropy(ref, y[k]).backward()
        for name in TL_KEYS:
            torch.testing.assert_close(getattr(net, name).grad[k], w[name].grad, rtol=1e-8, atol=1e-10, msg=name)


def test_members_are_independent_and_seeded():
    two = TransformerStack.init(P, **SHAPE, seeds=[5, 6])
    one = TransformerStack.init(P, **SHAPE, seeds=[6])
    assert all(torch.equal(getattr(two, n)[1], getattr(one, n)[0]) for n in TL_KEYS)
    assert 0.8 / 4 * 0.9 < two.W_in.std() < 0.8 / 4 * 1.1  # N(0, 0.8 / sqrt(d_model))
    a, b = all_pairs(P)
    torch.testing.assert_close(two(a, b)[1], one(a, b)[0])


@pytest.mark.slow
def test_train_py_trains_the_transformer_and_its_weights_load_into_hooked_transformer(tmp_out):
    """Two members in one job, W&B, and each member's model_m{k}.pt in TransformerLens's layout,
    giving the same logits in HookedTransformer as in modadd."""
    lens = pytest.importorskip("transformer_lens")
    run = tmp_out / "run"
    run_script("train.py", *SMALL, "lr=0.01", "epochs=40", "members=2",
               f"hydra.run.dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_run"] == 40
    rows = read_metrics(run / "metrics.csv")
    assert {"train/acc_m0", "train/acc_m1", "val/acc_std"} <= set(rows[-1])
    assert rows[-1]["train/loss"] < 0.8 * rows[0]["train/loss"]  # it learns (generalising takes far longer: the preset's test)
    w = wandb_inspect(run)
    assert w["state"] == "finished" and w["config"]["d_model"] == 16 and w["config"]["model"]["family"] == "transformer"
    assert "hidden" not in w["config"]

    a, b = all_pairs(P)
    tokens = torch.stack([a, b, torch.full_like(a, P)], dim=1)
    cfg = lens.HookedTransformerConfig(n_layers=1, d_vocab=P + 1, d_vocab_out=P, n_ctx=3, act_fn="relu",
                                       normalization_type=None, device="cpu", **SHAPE)
    states = [torch.load(run / f"model_m{k}.pt") for k in range(2)]
    net = TransformerStack.from_state_dicts(states)
    for k, state in enumerate(states):
        hooked = lens.HookedTransformer(cfg)
        hooked.load_state_dict(state, strict=True)
        theirs = hooked(tokens)[:, -1]
        ours = net(a, b)[k]
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("args, message", [
    (["model=transformer", "hidden=64"], "hidden does not apply to model=transformer"),
    (["model=transformer", "activation=gelu"], "activation does not apply to model=transformer"),
    (["d_model=64"], "d_model does not apply to model=mlp"),
    (["model=transformer", "d_mlp=0"], "d_mlp=0 is invalid: d_mlp must be an integer >= 1"),
    (["-m", "model=mlp,transformer", "hidden=8"], "hidden does not apply to model=transformer"),
    (["model=transformer", "experiment=grokking"], "hidden does not apply to model=transformer"),
    (["experiment=transformer_grokking", "hidden=64"], "hidden does not apply to model=transformer"),
])
def test_knobs_of_the_other_family_are_refused_before_any_work(tmp_out, args, message):
    proc = run_script("train.py", *args, f"hydra.run.dir={tmp_out / 'run'}", f"hydra.sweep.dir={tmp_out / 'sweep'}",
                      check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"] and message in proc.stderr
    assert not (tmp_out / "run").exists() and not (tmp_out / "sweep").exists()


def test_a_presets_family_decides_which_knobs_apply():
    preflight(["experiment=transformer_grokking", "d_model=64", "n_heads=2"])  # the preset picks the transformer
    preflight(["-m", "model=mlp,transformer", "experiment=compare", "p=23"])
    with pytest.raises(ConfigError, match="d_model does not apply to model=mlp"):
        preflight(["experiment=grokking", "d_model=64"])


def test_neuron_spectrum_equals_the_full_2d_fourier_transform():
    """The spectrum from four sums per neuron against numpy-free ground truth: torch's fft2 of
    the whole (a, b) grid, the 3x3 block {0, k, -k}^2 less the constant over the variance."""
    for p in (13, 12):  # odd and even (k = p/2 is its own mirror)
        x = torch.arange(p)
        A, B = torch.meshgrid(x, x, indexing="ij")
        grid = torch.randn(2, p, p, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(p))
        w = 2 * math.pi / p
        grid[0, :, :, 0] = torch.cos(w * 3 * A + 0.3) + 2 * torch.cos(w * 3 * (A + B) + 1) + 5  # all at k = 3
        flat = grid.flatten(1, 2)
        sums = {"by_a": grid.sum(2), "by_b": grid.sum(1), "sq": grid.square().sum((1, 2)),
                "by_sum": torch.zeros(2, p, 5, dtype=torch.float64).index_add_(1, ((A + B) % p).flatten(), flat),
                "by_diff": torch.zeros(2, p, 5, dtype=torch.float64).index_add_(1, ((A - B) % p).flatten(), flat)}
        spectrum = neuron_spectrum(sums, p)
        F2 = torch.fft.fft2(grid, dim=(1, 2))
        variance = (grid - grid.mean((1, 2), keepdim=True)).square().sum((1, 2))
        for k in range(1, p // 2 + 1):
            idx = sorted({0, k, (p - k) % p})
            block = F2[:, idx][:, :, idx].abs().square().sum((1, 2)) - F2[:, 0, 0].abs().square()
            torch.testing.assert_close(spectrum.fraction[..., k - 1].double(), block / p**2 / variance, atol=1e-6, rtol=0)
        assert spectrum.freq[0, 0] == 3 and spectrum.explained[0, 0] > 0.999999


def test_progress_measures_in_chunks_equal_the_whole_and_the_shared_losses():
    net = TransformerStack.init(P, **SHAPE, seeds=[0, 1])
    with torch.no_grad():  # make frequencies 2 and 5 stand out in the neurons, so there are key frequencies
        x = torch.arange(P + 1)[:, None] * 2 * math.pi / P
        net.W_E[:, :, :4] += 3 * torch.cat([torch.cos(2 * x), torch.sin(2 * x), torch.cos(5 * x), torch.sin(5 * x)], 1)
    train = torch.randperm(P * P, generator=torch.Generator().manual_seed(0))[:100]
    whole, spectrum, keys = progress_measures(net, train)
    chunked, spectrum_c, keys_c = progress_measures(net, train, max_bytes=1)  # one pair per chunk
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], msg=name)
    torch.testing.assert_close(spectrum_c.fraction, spectrum.fraction)
    assert [k.tolist() for k in keys] == [k.tolist() for k in keys_c] and all(len(k) for k in keys)

    a, b = all_pairs(P)
    logits = net(a, b).double()
    c = torch.arange(P)
    s = labels(a, b, P)
    for k in range(2):  # independently: least-squares projection onto cos / sin (w_f (a + b - c)), f key
        phase = 2 * math.pi / P * ((a + b)[:, None] - c[None, :])[..., None] * keys[k].double()  # (p*p, p, keys)
        U = torch.cat([torch.cos(phase), torch.sin(phase)], -1).reshape(P * P * P, -1)
        restricted = (U @ torch.linalg.lstsq(U, logits[k].reshape(-1, 1)).solution).view(P * P, P)
        excluded = logits[k] - restricted
        r_loss = F.cross_entropy(restricted, s)
        e_loss = F.cross_entropy(excluded[train], s[train])
        torch.testing.assert_close(whole["restricted_loss"][k].double(), r_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole["excluded_loss_train"][k].double(), e_loss, rtol=1e-5, atol=1e-6)
        e_all = F.cross_entropy(excluded, s)
        torch.testing.assert_close(whole["excluded_loss"][k].double(), e_all, rtol=1e-5, atol=1e-6)
    assert torch.equal(whole["full_acc"], (logits.argmax(-1) == labels(a, b, P)).float().mean(1))
    assert whole["key_freqs"].tolist() == [float(len(k)) for k in keys]


def test_frequency_ablation_equals_least_squares_projections():
    """Removing a key frequency from the logits against an independent least-squares projection
    onto its directions cos / sin (w_f (a + b - c)), on a model with planted frequencies."""
    net = TransformerStack.init(P, **SHAPE, seeds=[0])
    with torch.no_grad():
        x = torch.arange(P + 1)[:, None] * 2 * math.pi / P
        net.W_E[:, :, :4] += 3 * torch.cat([torch.cos(2 * x), torch.sin(2 * x), torch.cos(5 * x), torch.sin(5 * x)], 1)
    keys = torch.tensor([2, 5])
    rows = {r["ablation"]: r for r in key_frequency_ablation(net, keys, max_bytes=4096)}
    a, b = all_pairs(P)
    logits = net(a, b)[0].double()
    s, c = labels(a, b, P), torch.arange(P)

    def without(freqs):
        phase = 2 * math.pi / P * ((a + b)[:, None] - c[None, :])[..., None] * torch.tensor(freqs).double()
        U = torch.cat([torch.cos(phase), torch.sin(phase)], -1).reshape(P**3, -1)
        return logits - (U @ torch.linalg.lstsq(U, logits.reshape(-1, 1)).solution).view(P * P, P)

    for name, ablated in (("none (the model)", logits), ("remove k=2", without([2])), ("remove k=5", without([5])),
                          ("remove all key frequencies", without([2, 5])), ("keep only the key frequencies", logits - without([2, 5]))):
        assert rows[name]["acc"] == pytest.approx((ablated.argmax(-1) == s).double().mean().item(), abs=1e-9), name
        assert rows[name]["loss"] == pytest.approx(F.cross_entropy(ablated, s).item(), rel=1e-5), name


@pytest.mark.slow
def test_preset_groks_late_with_the_papers_signature_and_analyze_reads_it(tmp_out):
    """experiment=transformer_grokking memorises first and generalises much later, with Nanda et
    al.'s signature (measured: README): few key frequencies, restricted loss falling before the
    validation loss, excluded loss rising while the circuit forms, logits that need the key
    frequencies and nothing else."""
    run = tmp_out / "run"
    run_script("train.py", "experiment=transformer_grokking", "epochs=1000", "logger=csv", f"hydra.run.dir={run}", timeout=600)
    run_script("analyze.py", str(run))
    result = json.loads((run / "analysis" / "analysis.json").read_text())
    grok, phases = result["grokking"], result["phases"]
    assert result["family"] == "transformer" and result["val_acc"] > 0.99 and result["full_acc"] > 0.99
    assert grok["train_epoch"] < 150 and grok["val_epoch"] > 4 * grok["train_epoch"]  # delayed generalisation
    assert 2 <= len(result["key_frequencies"]) <= 8
    assert phases["memorisation_end"] < phases["circuit_formation_end"] < phases["cleanup_end"]
    assert phases["restricted_loss_below_1"] < phases["val_loss_below_1"]
    excluded = dict(map(tuple, result["excluded_loss"]))
    at = lambda epoch: excluded[max(e for e in excluded if e <= epoch)]  # noqa: E731
    assert at(phases["circuit_formation_end"]) > 2 * at(phases["memorisation_end"])  # rises while the circuit forms
    ablation = {r["ablation"]: r["acc"] for r in result["key_frequency_ablation"]}
    assert ablation["keep only the key frequencies"] > 0.99 and ablation["remove all key frequencies"] < 0.05
    for name in ("embedding_fourier_norms", "neuron_clusters", "key_frequency_ablation", "progress_measures",
                 "attention_from_equals", "grokking_curves"):
        assert (run / "analysis" / f"{name}.png").stat().st_size > 10_000, name


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory):
    """`train.py -m model=mlp,transformer experiment=compare` (short), then analyze.py on the sweep."""
    sweep = tmp_path_factory.mktemp("mixed") / "sweep"
    run_script("train.py", "-m", "model=mlp,transformer", "experiment=compare", "p=17", "epochs=30", "logger=csv",
               f"hydra.sweep.dir={sweep}")
    run_script("analyze.py", str(sweep), "--orders", "1", "--draws", "1", "--neurons", "16")
    return sweep


@pytest.mark.slow
def test_a_sweep_of_both_families_is_analysed_side_by_side(mixed_sweep):
    rows = list(csv.DictReader((mixed_sweep / "analysis" / "summary.csv").open()))
    assert sorted((r["family"], r["status"], r["analysed"]) for r in rows) == [("mlp", "ok", "True"), ("transformer", "ok", "True")]
    assert all(r["key_frequencies"] and r["acc_key_frequencies_only"] and r["acc_key_frequencies_removed"] for r in rows)
    assert all(r["algorithm"] in ("clock", "pizza", "neither") and r["distance_irrelevance"] for r in rows)
    mlp = next(r for r in rows if r["family"] == "mlp")
    assert float(mlp["gradient_symmetricity"]) > 0.99  # it adds W_a + W_b (the attention of a transformer need not)
    html = (mixed_sweep / "analysis" / "report.html").read_text()
    assert "MLP versus transformer" in html and "phase-sum" in html and "Key frequencies (from the MLP neurons)" in html
    job = next(d for d in mixed_sweep.iterdir() if "model=transformer" in d.name)
    assert (mixed_sweep / "analysis" / job.name / "key_frequency_ablation.png").exists()


@pytest.mark.slow
@needs_chromium
def test_the_mixed_sweeps_report_renders_in_chromium_with_every_image(mixed_sweep, tmp_out):
    report = mixed_sweep / "analysis" / "report.html"
    dom = rendered_dom(report, tmp_out)
    loaded = re.findall(r'<img[^>]*data-loaded="(\d+)"', dom)
    assert 'data-probed="yes"' in dom and 'data-external=""' in dom
    assert len(loaded) == report.read_text().count("<img") >= 12
    assert all(int(width) > 100 for width in loaded)  # every figure decoded
