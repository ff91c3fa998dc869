"""Length-bias audit: does the data prefer longer answers?

DPO learns whatever separates chosen from rejected; when that is mostly length, the policy learns verbosity
(Park et al. 2024, "Disentangling Length from Quality in DPO"). The audit measures the bias and, when it is
strong, recommends the length-regularized loss hook (`--loss_hook rdpo`) with a starting `--rdpo_alpha`.

The suggested alpha comes from R-DPO's optimum on pairs that differ only in length: with the longer answer winning a
share p of them by a gap of g tokens, DPO settles at beta * h = log(p / (1 - p)) and R-DPO at
log(p / (1 - p)) - alpha * g (tested in tests/test_losses.py). So alpha* = log(p / (1 - p)) / g is the alpha at which
R-DPO puts the *whole* length preference of the data down to length. Real pairs also differ in quality, which is
often longer too, so alpha* is an upper end to sweep down from, not a value to trust blindly.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dpo_recipes.jsonio import write_json_atomic
from dpo_recipes.data.lengths import count_tokens, word_count

# Defaults for calling a bias "strong": chosen longer in >= 60% (or <= 40%) of the pairs whose lengths differ,
# or |corr(length, preferred)| >= 0.2.
STRONG_SHARE = 0.6
STRONG_CORR = 0.2
MIN_PAIRS = 20  # below this, shares are too noisy to call a bias strong
# A share of the pairs whose lengths differ counts only when 50/50 would rarely give it: two-sided p below this.
# Without it, 44 vs 29 differing pairs (60%, p 0.08) among 373 mostly equal-length ones read as a strong bias.
MAX_P_VALUE = 0.05
# Say so when validation dropped more than this share of the rows before the audit: the bias of the survivors can
# be the opposite of the data's (the identity data: "shorter in 90%" on 32 of 376 rows, no bias on the 373 it trains).
COVERAGE_NOTE_SHARE = 0.5


@dataclass
class AuditReport:
    """Length statistics of chosen vs rejected completions. Lengths in `unit` (tokens, or words without a
    tokenizer); differences are chosen minus rejected."""

    pairs: int
    unit: str
    share_chosen_longer: float
    share_rejected_longer: float
    share_equal: float
    mean_chosen_length: float
    mean_rejected_length: float
    mean_length_diff: float
    median_length_diff: float
    length_preference_corr: float | None  # point-biserial: corr(length, 1 if chosen else 0) over both answers
    length_score_corr: float | None = None  # corr(length, score) over both answers, for scored data
    share_p_value: float | None = None  # two-sided p of that share under 50/50, over pairs whose lengths differ
    strong_bias: bool = False
    suggested_rdpo_alpha: float | None = None  # log(p / (1 - p)) / mean |gap|, when chosen is usually longer
    recommendation: str = ""
    thresholds: dict = field(default_factory=dict)
    rows_total: int | None = None  # rows read before validation; None when the caller did not say (see below)
    rows_audited: int | None = None  # = pairs, the rows validation kept
    dropped_by_rule: dict[str, int] = field(default_factory=dict)  # rule -> rows validation dropped before the audit
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the audit as JSON atomically."""
        return write_json_atomic(path, self.to_dict())

    def summary(self) -> str:
        corr = "n/a" if self.length_preference_corr is None else f"{self.length_preference_corr:+.3f}"
        lines = [
            f"Length bias over {self.pairs:,} pairs (lengths in {self.unit}):",
            f"  chosen longer   {100 * self.share_chosen_longer:5.1f}%   rejected longer "
            f"{100 * self.share_rejected_longer:5.1f}%   equal {100 * self.share_equal:5.1f}%",
            f"  mean length     chosen {self.mean_chosen_length:.1f}, rejected {self.mean_rejected_length:.1f}",
            f"  length diff     mean {self.mean_length_diff:+.1f}, median {self.median_length_diff:+.1f} "
            "(chosen - rejected)",
            f"  corr(length, preferred) {corr}",
        ]
        if self.length_score_corr is not None:
            lines.append(f"  corr(length, score)     {self.length_score_corr:+.3f}")
        lines.append(("  STRONG BIAS: " if self.strong_bias else "  ") + self.recommendation)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def record_coverage(audit: AuditReport, rows_total: int, dropped: dict[str, int], advice: str = "") -> AuditReport:
    """Record which share of the data the audit covers, with a note when validation dropped most of it.

    `dropped`: rows per validation rule (ValidationReport.dropped). `advice`: what to do about it, appended to the
    note (the CLI says which flags). Returns `audit`, changed in place.
    """
    audit.rows_total, audit.rows_audited = rows_total, audit.pairs
    audit.dropped_by_rule = {rule: n for rule, n in sorted(dropped.items(), key=lambda kv: -kv[1]) if n}
    n_dropped = sum(audit.dropped_by_rule.values())
    if rows_total and n_dropped > COVERAGE_NOTE_SHARE * rows_total:
        rules = ", ".join(f"{rule} {n:,}" for rule, n in audit.dropped_by_rule.items())
        audit.notes.append(f"the audit covers {audit.pairs:,} of {rows_total:,} rows; validation dropped {n_dropped:,} "
                           f"({rules}).{' ' + advice if advice else ''}")
    return audit


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(m["content"] for m in value)
    return value


def suggested_rdpo_alpha(share_longer_wins: float, mean_abs_gap: float) -> float | None:
    """alpha* = log(p / (1 - p)) / g: the R-DPO alpha whose optimum cancels a pure length preference (module doc).

    None when the longer answer does not win most pairs (R-DPO corrects verbosity, not terseness) or no length
    differs; p is clipped to 0.99 so that data where the longer answer always wins gets a finite value.
    """
    if share_longer_wins <= 0.5 or mean_abs_gap <= 0:
        return None
    p = min(share_longer_wins, 0.99)
    return math.log(p / (1 - p)) / mean_abs_gap


def _share_p_value(share: float, n: int) -> float:
    """Two-sided p of a share this far from 0.5 among n pairs under 50/50 (normal approximation of the binomial)."""
    z = abs(share - 0.5) * 2 * math.sqrt(n)
    return math.erfc(z / math.sqrt(2))


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def audit_length_bias(dataset, tokenizer=None, *, strong_share: float = STRONG_SHARE,
                      strong_corr: float = STRONG_CORR) -> AuditReport:
    """Measure the length bias of a normalized preference dataset (columns chosen, rejected, optional scores)."""
    chosen = [_text(v) for v in dataset["chosen"]]
    rejected = [_text(v) for v in dataset["rejected"]]
    if tokenizer is not None:
        unit = "tokens"
        lc, lr = np.array(count_tokens(chosen, tokenizer), float), np.array(count_tokens(rejected, tokenizer), float)
    else:
        unit = "words"  # a CJK character counts as a word: Chinese has no spaces to split on
        lc = np.array([word_count(t) for t in chosen], float)
        lr = np.array([word_count(t) for t in rejected], float)
    n = len(chosen)
    if n == 0:
        return AuditReport(0, unit, 0, 0, 0, 0, 0, 0, 0, None, recommendation="No pairs to audit.")
    diff = lc - lr
    longer, shorter = float((diff > 0).mean()), float((diff < 0).mean())
    lengths = np.concatenate([lc, lr])
    label = np.concatenate([np.ones(n), np.zeros(n)])
    corr = _corr(lengths, label)
    score_corr = None
    if "score_chosen" in dataset.column_names:
        scores = np.array(list(dataset["score_chosen"]) + list(dataset["score_rejected"]), float)
        ok = ~np.isnan(scores)
        score_corr = _corr(lengths[ok], scores[ok])
    unequal = longer + shorter
    share_of_unequal = longer / unequal if unequal else 0.5
    n_unequal = int((diff != 0).sum())
    p_value = _share_p_value(share_of_unequal, n_unequal) if n_unequal else None
    lopsided = share_of_unequal >= strong_share or share_of_unequal <= 1 - strong_share
    by_chance = p_value is None or p_value >= MAX_P_VALUE
    strong = n >= MIN_PAIRS and ((lopsided and not by_chance) or (corr is not None and abs(corr) >= strong_corr))
    direction = "longer" if share_of_unequal >= 0.5 else "shorter"
    alpha = suggested_rdpo_alpha(share_of_unequal, float(np.abs(diff[diff != 0]).mean()) if unequal else 0.0)
    if strong:
        rec = (f"chosen is {direction} in {100 * max(share_of_unequal, 1 - share_of_unequal):.0f}% of the pairs "
               f"whose lengths differ; DPO will learn to be {'verbose' if direction == 'longer' else 'terse'}.")
        if alpha is not None and unit == "tokens":
            rec += (f" Consider length regularization: --loss_hook rdpo --rdpo_alpha {alpha:.3g} (the alpha that "
                    "puts all of this length preference down to length; sweep down from it, e.g. x0.5, x0.25).")
        elif alpha is not None:
            rec += (" Consider length regularization: --loss_hook rdpo; audit with --tokenizer for a suggested "
                    "--rdpo_alpha (alpha is per token).")
    elif n < MIN_PAIRS:
        rec = f"Only {n} pairs: too few to judge a length bias."
    elif lopsided:
        share = 100 * max(share_of_unequal, 1 - share_of_unequal)
        rec = (f"No strong length bias: chosen is {direction} in {share:.0f}% of the {n_unequal} pairs whose lengths "
               f"differ, within chance of 50/50 (p {p_value:.2g}); length regularization is not needed.")
    else:
        rec = "No strong length bias; length regularization is not needed."
    return AuditReport(
        pairs=n, unit=unit, share_chosen_longer=longer, share_rejected_longer=shorter, share_equal=1 - unequal,
        mean_chosen_length=float(lc.mean()), mean_rejected_length=float(lr.mean()),
        mean_length_diff=float(diff.mean()), median_length_diff=float(np.median(diff)),
        length_preference_corr=corr, length_score_corr=score_corr, share_p_value=p_value, strong_bias=bool(strong),
        suggested_rdpo_alpha=alpha if unit == "tokens" else None, recommendation=rec,
        thresholds={"strong_share": strong_share, "strong_corr": strong_corr, "max_p_value": MAX_P_VALUE})
