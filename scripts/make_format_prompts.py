#!/usr/bin/env python
"""Write the format-following prompts of the pairs-in-rounds demo: data/formats/{train,heldout}.jsonl.

    python scripts/make_format_prompts.py

Four strict output formats the embedded SmolLM2-135M-Instruct starts out poor at (greedy, measured: one word 0/8,
all lowercase 0/8, ends with DONE 0/8, JSON with given keys 2/8), each a per-row check of dpo_recipes.pairs.rules:

    one_word    "What colour is {thing}? Answer with exactly one word."
    lowercase   "Describe {thing} in one sentence, using only lowercase letters."
    ends_with   "Tell me one fact about {thing}. End your reply with the word DONE."
    json_keys   'Describe {thing} as a JSON object with the keys "item" and "colour". Reply with the JSON only.'

The things are split before the prompts are made: a held-out thing never appears in a training prompt, so the
held-out score measures the format on subjects the model was never trained on (tests/test_format_prompts.py).
Deterministic: the same files every time.
"""

import json
import random
from pathlib import Path

THINGS = [
    "the sky", "grass", "snow", "a banana", "the sun", "coal", "a tomato", "the ocean", "a lemon", "an orange",
    "a strawberry", "milk", "chocolate", "a carrot", "a cucumber", "an eggplant", "a blueberry", "a flamingo",
    "a crow", "a swan", "a frog", "a polar bear", "a panda", "a zebra", "a tiger", "a fire truck", "a school bus",
    "a taxi in New York", "a stop sign", "a mailbox in the UK", "a lime", "a cherry", "a plum", "a pumpkin",
    "broccoli", "a lettuce leaf", "an avocado", "a coconut", "a ruby", "an emerald", "a sapphire", "gold",
    "silver", "copper", "charcoal", "chalk", "ink", "blood", "a rose", "a sunflower", "a violet", "a daisy",
    "lavender", "a pine tree in winter", "autumn leaves", "sand", "clay", "a brick", "cement", "rust",
    "a canary", "a cardinal", "a bluebird", "a robin's egg", "a ladybug", "a bumblebee", "a goldfish",
    "a penguin", "a raven", "a dolphin", "a jellyfish", "an octopus", "a salmon fillet", "butter", "cheddar",
]
TASKS = {
    "one_word": ("What colour is {thing}? Answer with exactly one word.", {"type": "one_word"}),
    "lowercase": ("Describe {thing} in one sentence, using only lowercase letters.", {"type": "lowercase"}),
    "ends_with": ("Tell me one fact about {thing}. End your reply with the word DONE.",
                  {"type": "ends_with", "phrase": "DONE", "ignore_case": False}),
    "json_keys": ('Describe {thing} as a JSON object with the keys "item" and "colour". Reply with the JSON only.',
                  {"type": "json_keys", "keys": ["item", "colour"]}),
}
HELDOUT_THINGS = 15  # x 4 formats = 60 held-out prompts


def rows(things: list[str]) -> list[dict]:
    return [{"prompt": template.format(thing=thing), "check": check, "task": task, "thing": thing}
            for thing in things for task, (template, check) in TASKS.items()]


def main() -> None:
    things = sorted(set(THINGS))
    random.Random(0).shuffle(things)
    heldout, train = things[:HELDOUT_THINGS], things[HELDOUT_THINGS:]
    out = Path(__file__).resolve().parents[1] / "data" / "formats"
    out.mkdir(parents=True, exist_ok=True)
    for name, subset in (("train", train), ("heldout", heldout)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(subset)), encoding="utf-8")
        print(f"{path}: {len(rows(subset))} prompts ({len(subset)} things x {len(TASKS)} formats)")


if __name__ == "__main__":
    main()
