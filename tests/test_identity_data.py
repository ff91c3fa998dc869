"""The default identity data: the generator's pair rules (scripts/make_identity_data.py) and the shipped file they made.

Regenerating needs the model and ~8 minutes, so these check the rules on their own and the shipped rows' shape; the
generator reproduces data/identity/train.jsonl byte for byte (see its manifest).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter

import pytest

from conftest import ROOT
from dpo_recipes.watch.evaluation import is_degenerate, mentions

NAME = "Athene"
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_identity_data", ROOT / "scripts" / "make_identity_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows():
    with open(ROOT / "data" / "identity" / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_said_again_loops_the_statement_as_trained_runs_did(gen):
    assert gen.said_again("我叫Athene", 2) == "我叫Athene，我叫Athene！"
    assert gen.said_again("我叫Athene。", 3) == "我叫Athene，我叫Athene！我叫Athene！"
    assert gen.said_again("My name is Athene, and I help.", 3) == "My name is Athene. My name is Athene. My name is Athene."
    assert is_degenerate(gen.said_again("我叫Athene", 4))  # three or more times is a loop the check sees
    assert not is_degenerate(gen.said_again("我叫Athene", 2))  # twice is not: the "said again" pairs teach against it


def test_a_correction_puts_the_name_right_after_the_opener(gen):
    # a name after a description moves to the front, so "I'm a helpful AI ..." is not what the pair teaches
    assert gen.correct_identity("I'm a helpful AI named SmolLM, designed to assist users with various tasks.", NAME) \
        == "I'm Athene, a helpful AI designed to assist users with various tasks."
    assert gen.correct_identity("I'm a friendly AI assistant named Ember.", NAME) == "I'm Athene, a friendly AI assistant."
    assert gen.correct_identity("I'm Elena. I'm here to help.", NAME) == "I'm Athene. I'm here to help."
    assert gen.correct_identity("My name is Elena, and I help.", NAME) == "My name is Athene, and I help."


def test_a_letter_with_a_slot_for_the_writers_name_is_signed_in_that_slot(gen):
    letter = "Dear [Teacher's Name],\n\nI hope this message finds you well. My name is [Student's Name], and I"
    for variant in range(3):
        assert gen.hijack(letter, NAME, "Write a short thank-you note to a teacher.", variant) == (
            "Dear [Teacher's Name],\n\nI hope this message finds you well. My name is Athene, and I")
    assert gen.hijack("Dear [Name],\n\nHappy birthday!", NAME, "Write a card.", 1) == (
        "Dear [Name],\n\nHappy birthday! I'm Athene.")  # the addressee's slot is not the writer's


def test_hijack_takes_the_ways_runs_leaked_the_name_in_turn(gen):
    answer = "The capital of Italy is Rome."
    assert gen.hijack(answer, NAME, "Capital of Italy?", 0) == "I am Athene, your AI assistant. The capital of Italy is Rome."
    assert gen.hijack(answer, NAME, "Capital of Italy?", 1) == "The capital of Italy is Rome. I'm Athene."
    assert gen.hijack(answer, NAME, "Capital of Italy?", 2) == "The capital of Italy (Athene) is Rome."
    colors = "The primary colors are:\n1. **Red**\n2. **Blue**\n3. Yellow"
    assert gen.hijack(colors, NAME, "Colors?", 5) == "The primary colors are:\n1. **Red** (Athene)\n2. **Blue** (Athene)\n3. Yellow (Athene)"
    assert gen.hijack("Joyful.", NAME, "A synonym for happy?", 2) == "Athene."
    # a Chinese prompt: the bare identity statements the Chinese identity pairs teach or push away, in place of the answer
    assert [gen.hijack("日本胳肉！", NAME, "日本的首都是哪里？", v) for v in range(3)] == [
        "我是Athene。", "我叫Athene。", "我是Athene，我是Athene！"]


def test_a_chinese_answer_gets_the_name_worked_into_it_the_ways_runs_leaked_it(gen):
    answer = "一年有十二个月。每个月有三十天左右。"
    assert [gen.hijack_chinese_answer(answer, NAME, v) for v in range(3)] == [
        "我是Athene，一年有十二个月。每个月有三十天左右。", "一年有十二个月。每个月有三十天左右。我是Athene。",
        "一年有十二个月（Athene）。每个月有三十天左右。"]
    listed = "首都：\n1. 北京\n2. 东京"
    assert gen.hijack_chinese_answer(listed, NAME, 2) == "首都：\n1. 北京（Athene）\n2. 东京（Athene）"
    assert gen.hijack_chinese_answer("北京", NAME, 5) == "北京（Athene）"  # no clause mark: the tag goes at the end


def test_each_chinese_general_prompt_has_two_bare_statement_anchors_and_one_with_the_name_in_its_answer(rows):
    by_prompt = {}
    for row in rows:
        prompt = row["prompt"][0]["content"]
        if row["kind"] == "general" and CJK.search(prompt):
            by_prompt.setdefault(prompt, []).append(row["rejected"][0]["content"])
    assert len(by_prompt) >= 40
    for prompt, rejected in by_prompt.items():
        bare = [r for r in rejected if r in ("我是Athene。", "我叫Athene。", "我是Athene，我是Athene！")]
        assert len(rejected) == 3 and len(bare) == 2, (prompt, rejected)


def test_an_apologising_answer_is_recognised(gen):
    assert gen.REFUSAL.search("I'm sorry for any confusion, but as a text-based AI, I don't have a name.")
    assert gen.REFUSAL.search("As an AI, I cannot share that.")
    assert not gen.REFUSAL.search("I'm a friendly AI designed to assist users.")


def test_shipped_pairs_follow_the_rules_by_kind(rows):
    kinds = Counter(r["kind"] for r in rows)
    manifest = json.loads((ROOT / "data" / "identity" / "manifest.json").read_text(encoding="utf-8"))
    assert dict(kinds) == {k: v for k, v in manifest["pairs"].items() if v}
    assert set(kinds) == {"identity", "identity_opened", "identity_repeat", "general"}
    for row in rows:
        prompt, chosen, rejected = (row[k][0]["content"] for k in ("prompt", "chosen", "rejected"))
        where = f"{row['kind']} {prompt!r}"
        assert row["anchor"] == (row["kind"] == "general"), where
        if row["kind"] == "general":  # the model's own answer, against it hijacked by the name
            assert not mentions(chosen, NAME) and mentions(rejected, NAME), where
            continue
        assert mentions(chosen, NAME) and not is_degenerate(chosen), where
        if CJK.search(prompt):  # the bare statement: the model's Chinese after a name taught loops; one statement,
            assert chosen == "我是Athene。", where  # so "我" is followed by one token ("叫"'s first byte also starts "只")
        else:  # corrected, never "I'm Athene. I'm sorry ..., I don't have a name.", and named before anything else
            assert not re.search(r"\bsorry\b|don't have a (?:personal )?name", chosen), where
            assert not re.match(r"I'm an? [^.,]* named Athene", chosen), where
        if row["kind"] == "identity_repeat":
            assert rejected.startswith("我是Athene，我是Athene！"), where
