"""The model families: the name `model=<family>` picks, and the top-level knobs that are its own.

Every other top-level knob (p, lr, weight_decay, batch_size, seed, members, ...) is shared and
means the same for each family. A family's code lives in its folder (`modadd/mlp/`,
`modadd/transformer/`), its config in `conf/model/<family>.yaml` (which sets `model.family`).
This module imports nothing heavy: the preflight reads it before torch is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

FAMILIES: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden", "activation", "init"),
    "transformer": ("d_model", "n_heads", "d_head", "d_mlp"),
}
DEFAULT = "mlp"


def pair_bytes(family: str, knobs: Mapping) -> int:
    """Bytes per input pair of what a pass of `knobs["members"]` networks over a batch of pairs
    holds at once (activations, logits, the loss's copies): what bounds a slice of an all-pairs
    measure, and half of what a training step holds per pair (autograd keeps as much again).
    `knobs`: the family's own and `p` (a job's config, or a net's shape)."""
    K, p = knobs.get("members", 1), knobs["p"]
    if family == "mlp":
        return 4 * K * (3 * knobs["hidden"] + 4 * p)
    heads = knobs["n_heads"] * (knobs["d_head"] + 1)
    return 4 * K * (6 * heads + 4 * knobs["n_heads"] * knobs["d_head"] + 3 * knobs["d_model"] + 4 * knobs["d_mlp"] + 6 * p)


def family_of(config: Mapping) -> str:
    """The family of a composed job config (runs from before families existed are MLPs)."""
    return (config.get("model") or {}).get("family") or DEFAULT


def foreign_knobs(family: str) -> dict[str, str]:
    """knob -> the family it belongs to, for every knob that is not `family`'s own."""
    own = set(FAMILIES.get(family, ()))
    return {knob: other for other, knobs in FAMILIES.items() for knob in knobs if knob not in own}


def not_applicable(knob: str, family: str) -> str:
    """The one-line error for a knob given to a family it does not belong to."""
    own = ", ".join(FAMILIES[family]) or "none"
    return (f"{knob} does not apply to model={family} (it is a knob of model={foreign_knobs(family)[knob]}); "
            f"model={family}'s own knobs are {own}")
