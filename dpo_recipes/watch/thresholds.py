"""When each health alarm fires (`HealthThresholds`), read from the command line ('name=value,...') or YAML."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from dpo_recipes.errors import DPORecipesError


@dataclass
class HealthThresholds:
    """When each alarm fires. A bound set to None turns its check off (`max_margin=off` on the command line).

    The defaults are quiet on the default run (identity data, sigmoid+sft, beta 0.25, 30 steps logged every 5;
    tests/fixtures/default_run), whose values are quoted per field.
    """

    displacement_logs: int = 3
    """likelihood_displacement: training logs in a row over which the chosen log-ratio must fall at every log while
    the margin rises (3 logs = 2 falls in a row: one noisy batch cannot make a trend)."""
    displacement_min_drop: float | None = 2.0
    """likelihood_displacement: nats per answer the chosen log-ratio (rewards/chosen / beta) must lose over those
    logs, ending below 0 (chosen less likely than under the reference). The default run's only rises (+1.6 to +21.7)
    and moves ~0.5 nats from log to log on its plateau; 2 nats is e^2 = 7x less likely."""
    max_margin: float | None = 40.0
    """reward_hacking: rewards/margins as TRL logs it (beta x nats). The sigmoid loss's gradient on a pair is
    sigmoid(-margin), 2e-9 at 20: past 40 the preference term asks nothing and the margin is driven by the learning
    rate or other terms. The default run peaks at 8.3."""
    max_drift: float | None = 2.0
    """reward_hacking: the KL proxy. drift = (|chosen log-ratio| + |rejected log-ratio|) / (|ref logps chosen| +
    |ref logps rejected|), all per answer from the logged means (log-ratio = rewards / beta; the reference's log-prob =
    logps - rewards / beta, exact for means): how far the policy's log-probs of the training answers moved, as a
    share of the reference's own NLL of them. It is length-free, unlike the mean |log-ratio| in nats (also reported),
    which grows with answer length. A lower bound per pair (means of signed values). The default run peaks at 0.50
    (chosen +21.7, rejected -11.6 nats on reference log-probs of -39 and -31); 2.0 is e.g. the chosen answers at their
    ceiling and the rejected pushed to ~4x their reference NLL."""
    no_learning_after: float = 0.25
    """no_learning: warm-up as a share of max_steps; only logs after it count (the default run is at 0.575 accuracy at
    step 5 of 30, 0.975 at step 10)."""
    no_learning_after_steps: int | None = None
    """no_learning: warm-up in optimizer steps; when set it replaces no_learning_after."""
    no_learning_logs: int = 3
    """no_learning: training logs in a row after warm-up that must all look stuck."""
    no_learning_accuracy_band: float | None = 0.1
    """no_learning: stuck means |rewards/accuracies - 0.5| <= this (0.4 to 0.6 by default: a log of 40 pairs at
    chance lands within it 85% of the time, 3 in a row 61%). The default run is at 0.975 or more after warm-up."""
    no_learning_max_margin: float | None = 1.0
    """no_learning: ... and |rewards/margins| / beta below this many nats per pair (the default run: 10 nats at step
    10). None: accuracies alone decide."""
    max_length_growth: float | None = 0.5
    """length_drift: growth of the held-out answers' mean length in words (whitespace-separated; CJK text without
    spaces counts as few words), after / before - 1, over all answers and per kind. The default run shrinks them
    (28.4 to 10.8 words)."""
    max_degenerate_increase: float | None = 0.1
    """heldout_regression: share of held-out answers that loop (`evaluation.is_degenerate`), after minus before
    (0.1 of 56 prompts = 6 more). The default run goes from 10 to 1."""
    max_identity_drop: float | None = 0.2
    """heldout_regression: identity rate before minus after (the default run rises from 0.0 to 0.91)."""
    max_leak_increase: float | None = 0.25
    """heldout_regression: share of general answers that mention the identity name, after minus before (the default
    run: 0 of 24). General answers that only change wording are not a regression (its unchanged rate is 0.25)."""
    max_empty_increase: float | None = 0.1
    """heldout_regression: share of held-out answers with no words, after minus before (the default run: none)."""


_COUNTS = {"displacement_logs": 2, "no_learning_logs": 1}  # integer fields and their smallest sensible value
_OPTIONAL = {f.name for f in fields(HealthThresholds) if f.name not in _COUNTS and f.name != "no_learning_after"}


def parse_thresholds(value: str | Mapping | HealthThresholds | None) -> HealthThresholds:
    """Thresholds from 'name=value,name=value' (command line) or a mapping (YAML); None or '' gives the defaults.

    Raises DPORecipesError naming the key for an unknown name or a value that is not a number (or 'none'/'off' for a
    bound), with the known names.
    """
    if isinstance(value, HealthThresholds):
        return value
    if value is None:
        return HealthThresholds()
    known = [f.name for f in fields(HealthThresholds)]
    if isinstance(value, str):
        items = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            name, sep, text = part.partition("=")
            if not sep:
                raise DPORecipesError(f"health_thresholds: {part!r} is not name=value; known names: "
                                      f"{', '.join(known)}.")
            items[name.strip()] = text.strip()
    elif isinstance(value, Mapping):
        items = dict(value)
    else:
        raise DPORecipesError(f"health_thresholds must be 'name=value,...' or a mapping, not {type(value).__name__}.")
    values = {}
    for name, raw in items.items():
        if name not in known:
            raise DPORecipesError(f"health_thresholds: {name!r} is not a threshold; known names: {', '.join(known)}.")
        values[name] = _threshold_value(name, raw)
    return HealthThresholds(**values)


def _threshold_value(name: str, raw) -> float | int | None:
    if isinstance(raw, str) and raw.lower() in ("none", "off", "null") and name in _OPTIONAL:
        return None
    if raw is None and name in _OPTIONAL:
        return None
    want = "a whole number" if name in _COUNTS else "a number" + (" or 'off'" if name in _OPTIONAL else "")
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = float(raw)
        if name in _COUNTS or name == "no_learning_after_steps":
            if number != int(number):
                raise ValueError
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise DPORecipesError(f"health_thresholds: {name}={raw!r} is not {want}.") from None
    low = _COUNTS.get(name, 0)
    if not math.isfinite(number) or number < low:
        raise DPORecipesError(f"health_thresholds: {name}={raw!r} must be {want} >= {low}.")
    return number
