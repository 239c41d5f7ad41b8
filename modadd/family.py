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
