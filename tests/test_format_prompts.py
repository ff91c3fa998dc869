"""The pairs-in-rounds demo's prompts (data/formats): valid checks, and held-out subjects never in training."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from dpo_recipes.pairs import build_verifier, load_prompts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "formats"


def test_every_row_has_a_check_the_pairs_rules_accept_and_that_judges_answers():
    verifier = build_verifier("none")  # every row must carry its own check
    for name in ("train", "heldout"):
        rows = load_prompts(str(DATA / f"{name}.jsonl"))
        verifier.prepare(rows)  # builds each row's rule; a bad spec fails here naming file:line
        for row in rows:
            word = row.data["check"]["checks"][1]["words"][0]  # a right colour, or the thing's name
            right = {"one_word": f"{word.title()}.", "lowercase": f"it is a {word}, and it is lovely.",
                     "ends_with": f"A {word} is known to many. DONE",
                     "json_keys": f'{{"item": "{row.data["thing"]}", "colour": "{word}"}}'}[row.data["task"]]
            assert verifier.verdict(row, right) == (1.0, True), (row.where, right)
            # the right form with the wrong content, or the reverse: half a score, never a pass
            wrong = {"one_word": "Chocolatey.", "lowercase": "it is a thing, and it is lovely.",
                     "ends_with": "It is known to many. DONE", "json_keys": '{"item": "x", "colour": "plaid"}'}
            assert verifier.verdict(row, wrong[row.data["task"]]) == (0.5, False), row.where
            assert verifier.verdict(row, "Nothing Here Is Right, Mostly") == (0.0, False), row.where


def test_held_out_prompts_have_subjects_never_in_training_and_are_at_least_50():
    read = {name: [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "heldout")}
    assert len(read["heldout"]) >= 50
    train_things = {r["thing"] for r in read["train"]}
    assert not train_things & {r["thing"] for r in read["heldout"]}
    train_text = "\n".join(r["prompt"] for r in read["train"])
    assert not any(re.search(rf"\b{re.escape(r['thing'])}\b", train_text) for r in read["heldout"])  # as words
    assert not {r["prompt"] for r in read["train"]} & {r["prompt"] for r in read["heldout"]}


def test_the_files_are_what_the_script_writes(tmp_path):
    before = {p.name: p.read_bytes() for p in DATA.glob("*.jsonl")}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_format_prompts.py")], check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in DATA.glob("*.jsonl")} == before
