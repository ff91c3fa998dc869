"""dpo_recipes.data.audit: the length-bias figures and when rdpo is recommended."""

import math

import pytest
from datasets import Dataset

from dpo_recipes.data.audit import STRONG_CORR, audit_length_bias, suggested_rdpo_alpha


def _ds(pairs, scores=None):
    data = {"prompt": ["p"] * len(pairs), "chosen": [c for c, _ in pairs], "rejected": [r for _, r in pairs]}
    if scores:
        data["score_chosen"] = [a for a, _ in scores]
        data["score_rejected"] = [b for _, b in scores]
    return Dataset.from_dict(data)


def test_strong_bias_when_chosen_is_usually_longer():
    pairs = [("word " * (10 + i % 3), "word " * 4) for i in range(40)]
    a = audit_length_bias(_ds(pairs))
    assert a.unit == "words" and a.share_chosen_longer == 1.0 and a.share_equal == 0.0
    assert a.mean_length_diff == pytest.approx(sum(10 + i % 3 - 4 for i in range(40)) / 40)
    assert a.length_preference_corr > 0.9 and a.strong_bias and "--loss_hook rdpo" in a.recommendation


def test_no_bias_when_length_does_not_predict_preference():
    pairs = [("a b c d e f", "a b c") if i % 2 else ("a b c", "a b c d e f") for i in range(40)]
    a = audit_length_bias(_ds(pairs))
    assert a.share_chosen_longer == 0.5 and abs(a.length_preference_corr) < 1e-9
    assert not a.strong_bias and "not needed" in a.recommendation


def test_bias_towards_shorter_chosen_is_also_strong():
    pairs = [("a", "a b c d e f g")] * 30
    a = audit_length_bias(_ds(pairs))
    assert a.strong_bias and "shorter" in a.recommendation


def test_too_few_pairs_are_not_called_biased():
    a = audit_length_bias(_ds([("a b c d", "a")] * 5))
    assert not a.strong_bias and "too few" in a.recommendation


def test_conversational_pairs_and_length_score_correlation():
    pairs = [([{"role": "assistant", "content": "x " * (i + 2)}], [{"role": "assistant", "content": "x"}])
             for i in range(25)]
    scores = [(float(i + 2), 1.0) for i in range(25)]
    a = audit_length_bias(_ds(pairs, scores))
    assert a.mean_rejected_length == 1.0 and a.length_score_corr == pytest.approx(1.0)
    assert "corr(length, score)" in a.summary()


def test_token_unit_with_a_tokenizer():
    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}  # one token per character

    a = audit_length_bias(_ds([("abcd", "ab")] * 3), Tok())
    assert a.unit == "tokens" and a.mean_length_diff == 2.0


def test_suggested_rdpo_alpha_cancels_the_length_preference():
    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}  # one token per word

    long, short = "w " * 30, "w " * 10  # gap of 20 tokens
    pairs = [(long, short)] * 24 + [(short, long)] * 6  # the longer answer wins 80%
    a = audit_length_bias(_ds(pairs), Tok())
    alpha = math.log(0.8 / 0.2) / 20
    assert a.suggested_rdpo_alpha == pytest.approx(alpha)
    assert f"--rdpo_alpha {alpha:.3g}" in a.recommendation
    # Without a tokenizer, lengths are words: no per-token alpha is suggested, but rdpo still is.
    words = audit_length_bias(_ds(pairs))
    assert words.suggested_rdpo_alpha is None and "--loss_hook rdpo" in words.recommendation


def test_no_alpha_when_chosen_is_usually_shorter_or_lengths_are_equal():
    assert suggested_rdpo_alpha(0.3, 20.0) is None and suggested_rdpo_alpha(0.9, 0.0) is None
    assert suggested_rdpo_alpha(1.0, 10.0) == pytest.approx(math.log(99) / 10)  # p clipped to 0.99: finite


def test_a_lopsided_share_of_few_differing_pairs_is_within_chance():
    # The identity data under the recipe's thresholds: 300 equal-length pairs, chosen shorter in 44 of the 73 others.
    pairs = [("a b c", "d e f")] * 300 + [("a b", "a b c")] * 44 + [("a b c", "a b")] * 29
    a = audit_length_bias(_ds(pairs))
    assert round(a.share_rejected_longer / (a.share_chosen_longer + a.share_rejected_longer), 2) == 0.6
    assert 0.05 < a.share_p_value < 0.1 and abs(a.length_preference_corr) < STRONG_CORR
    assert not a.strong_bias and "within chance" in a.recommendation and "73 pairs" in a.recommendation
    # The same share over ten times the pairs is no accident.
    assert audit_length_bias(_ds(pairs[300:] * 10)).strong_bias


def test_coverage_is_recorded_and_a_mostly_dropped_input_gets_a_note():
    from dpo_recipes.data.audit import record_coverage

    pairs = [("a", "a b c d e f g")] * 32
    a = record_coverage(audit_length_bias(_ds(pairs)), 376, {"too_short": 145, "too_similar": 199, "duplicate": 0},
                        "Pass --config RECIPE.yaml.")
    d = a.to_dict()
    assert d["rows_total"] == 376 and d["rows_audited"] == 32
    assert d["dropped_by_rule"] == {"too_similar": 199, "too_short": 145}
    note = "note: the audit covers 32 of 376 rows; validation dropped 344 (too_similar 199, too_short 145)."
    assert f"  {note} Pass --config RECIPE.yaml." in a.summary().splitlines()
    few = record_coverage(audit_length_bias(_ds(pairs)), 60, {"too_short": 28})  # less than half dropped
    assert few.notes == [] and "note:" not in few.summary() and few.dropped_by_rule == {"too_short": 28}
