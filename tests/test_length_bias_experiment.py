"""experiments/length_bias.py builds the data its conclusions rest on: check the designs without training."""

import importlib.util
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "experiments" / "length_bias.py"
_spec = importlib.util.spec_from_file_location("length_bias", _path)
length_bias = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(length_bias)


def _text(pair, key):
    return pair[key][0]["content"]


@pytest.mark.parametrize("design", ["length", "quality"])
@pytest.mark.parametrize("share", [0.5, 0.8, 1.0])
def test_the_longer_answer_wins_exactly_the_requested_share(design, share):
    pairs = length_bias.make_pairs(design, share)
    long_wins = [len(_text(p, "chosen")) > len(_text(p, "rejected")) for p in pairs]
    assert len(pairs) == len(length_bias.TEMPLATES) * len(length_bias.TRAIN_SKILLS)
    assert sum(long_wins) == round(share * len(pairs))
    if 0 < share < 1:  # spread: neither the template nor the skill alone says which answer wins
        short_prompts = [p["prompt"][0]["content"] for p, won in zip(pairs, long_wins) if not won]
        for template in length_bias.TEMPLATES:
            assert 0 < sum(p.startswith(template.split("{")[0]) for p in short_prompts) < len(length_bias.TRAIN_SKILLS)
        if share >= 2 / 3:
            for skill in length_bias.TRAIN_SKILLS:
                assert sum(p.endswith((f" {skill}?", f" {skill}.")) for p in short_prompts) <= 1


def test_length_pairs_differ_only_by_the_elaboration_and_quality_pairs_always_prefer_the_tip():
    for pair in length_bias.make_pairs("length", 0.8):
        short, long = sorted([_text(pair, "chosen"), _text(pair, "rejected")], key=len)
        assert long.startswith(short) and "small goal" in long[len(short):]
    for pair in length_bias.make_pairs("quality", 0.8):
        assert _text(pair, "chosen").startswith("Practice") and _text(pair, "rejected").startswith("I don't know")


def test_held_out_skills_are_not_trained_on():
    assert not set(length_bias.EVAL_SKILLS) & set(length_bias.TRAIN_SKILLS)
    # the markers that count "elaborated" answers all come from the trained elaboration
    assert all(marker in length_bias.ELABORATION.lower() for marker in length_bias.ELABORATION_MARKERS)
