#!/usr/bin/env python
"""Write the format-following prompts of the pairs-in-rounds demo: data/formats/{train,heldout}.jsonl.

    python scripts/make_format_prompts.py

Four strict output formats the embedded SmolLM2-135M-Instruct starts out poor at (greedy, measured: one word 0/8,
all lowercase 0/8, ends with DONE 0/8, JSON with given keys 2/8), each a per-row check of dpo_recipes.pairs.rules,
and each with a check of what the answer says (`mentions`: a right colour, or the thing's name):

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

# Each thing with the colours a right answer may name and the words that say it is about that thing. The checks test
# what an answer says as well as its form: "What colour is a tiger? Answer with exactly one word." -> "chocolate" is
# one word and fails; "Orange." passes. A shortcut (any one word, any lowercase text) is not rewarded.
GREY = ["grey", "gray"]
THINGS = {
    "the sky": (["blue"], ["sky"]), "grass": (["green"], ["grass"]), "snow": (["white"], ["snow"]),
    "a banana": (["yellow"], ["banana", "bananas"]), "the sun": (["yellow", "orange", "white", "gold", "golden"],
                                                              ["sun"]),
    "coal": (["black"], ["coal"]), "a tomato": (["red"], ["tomato", "tomatoes"]), "the ocean": (["blue"], ["ocean"]),
    "a lemon": (["yellow"], ["lemon", "lemons"]), "an orange": (["orange"], ["orange", "oranges"]),
    "a strawberry": (["red"], ["strawberry", "strawberries"]), "milk": (["white"], ["milk"]),
    "chocolate": (["brown"], ["chocolate"]), "a carrot": (["orange"], ["carrot", "carrots"]),
    "a cucumber": (["green"], ["cucumber", "cucumbers"]), "an eggplant": (["purple"], ["eggplant", "eggplants"]),
    "a blueberry": (["blue", "purple"], ["blueberry", "blueberries"]), "a flamingo": (["pink"], ["flamingo",
                                                                                            "flamingos"]),
    "a crow": (["black"], ["crow", "crows"]), "a swan": (["white", "black"], ["swan", "swans"]),
    "a frog": (["green"], ["frog", "frogs"]), "a polar bear": (["white"], ["polar bear", "polar bears"]),
    "a panda": (["black", "white"], ["panda", "pandas"]), "a zebra": (["black", "white"], ["zebra", "zebras"]),
    "a tiger": (["orange", "black"], ["tiger", "tigers"]), "a fire truck": (["red"], ["fire truck", "fire trucks"]),
    "a school bus": (["yellow"], ["school bus", "bus"]), "a taxi in New York": (["yellow"], ["taxi", "taxis", "cab"]),
    "a stop sign": (["red"], ["stop sign", "sign"]), "a mailbox in the UK": (["red"], ["mailbox", "postbox",
                                                                                    "post box"]),
    "a lime": (["green"], ["lime", "limes"]), "a cherry": (["red"], ["cherry", "cherries"]),
    "a plum": (["purple", "red"], ["plum", "plums"]), "a pumpkin": (["orange"], ["pumpkin", "pumpkins"]),
    "broccoli": (["green"], ["broccoli"]), "a lettuce leaf": (["green"], ["lettuce"]),
    "an avocado": (["green"], ["avocado", "avocados"]), "a coconut": (["brown", "white"], ["coconut", "coconuts"]),
    "a ruby": (["red"], ["ruby", "rubies"]), "an emerald": (["green"], ["emerald", "emeralds"]),
    "a sapphire": (["blue"], ["sapphire", "sapphires"]), "gold": (["gold", "golden", "yellow"], ["gold"]),
    "silver": (["silver", *GREY], ["silver"]), "copper": (["copper", "orange", "brown", "red"], ["copper"]),
    "charcoal": (["black", *GREY], ["charcoal"]), "chalk": (["white"], ["chalk"]),
    "ink": (["black", "blue"], ["ink"]), "blood": (["red"], ["blood"]), "a rose": (["red", "pink"], ["rose", "roses"]),
    "a sunflower": (["yellow"], ["sunflower", "sunflowers"]), "a violet": (["violet", "purple"], ["violet", "violets"]),
    "a daisy": (["white", "yellow"], ["daisy", "daisies"]), "lavender": (["purple", "lavender", "violet"],
                                                                        ["lavender"]),
    "a pine tree in winter": (["green", "white"], ["pine", "tree", "trees"]),
    "autumn leaves": (["red", "orange", "yellow", "brown", "gold", "golden"], ["leaves", "leaf"]),
    "sand": (["beige", "tan", "yellow", "gold", "golden", "brown"], ["sand"]),
    "clay": (["red", "brown", "orange", *GREY], ["clay"]), "a brick": (["red", "brown"], ["brick", "bricks"]),
    "cement": (GREY, ["cement"]), "rust": (["orange", "red", "brown"], ["rust"]),
    "a canary": (["yellow"], ["canary", "canaries"]), "a cardinal": (["red"], ["cardinal", "cardinals"]),
    "a bluebird": (["blue"], ["bluebird", "bluebirds"]), "a robin's egg": (["blue"], ["egg", "eggs"]),
    "a ladybug": (["red"], ["ladybug", "ladybugs"]), "a bumblebee": (["yellow", "black"], ["bumblebee", "bee",
                                                                                         "bumblebees", "bees"]),
    "a goldfish": (["orange", "gold", "golden"], ["goldfish"]), "a penguin": (["black", "white"], ["penguin",
                                                                                                "penguins"]),
    "a raven": (["black"], ["raven", "ravens"]), "a dolphin": ([*GREY, "blue"], ["dolphin", "dolphins"]),
    "a jellyfish": (["clear", "transparent", "translucent", "pink", "blue", "white", "purple"], ["jellyfish"]),
    "an octopus": (["red", "orange", "brown", "purple", "pink"], ["octopus", "octopuses", "octopi"]),
    "a salmon fillet": (["pink", "orange", "salmon"], ["salmon"]), "butter": (["yellow"], ["butter"]),
    "cheddar": (["orange", "yellow"], ["cheddar", "cheese"]),
}
# Each format's check: the form the prompt asks for, and (`mentions`) the content a right answer has.
TASKS = {
    "one_word": ("What colour is {thing}? Answer with exactly one word.", {"type": "one_word"}, "colours"),
    "lowercase": ("Describe {thing} in one sentence, using only lowercase letters.", {"type": "lowercase"}, "names"),
    "ends_with": ("Tell me one fact about {thing}. End your reply with the word DONE.",
                  {"type": "ends_with", "phrase": "DONE", "ignore_case": False}, "names"),
    "json_keys": ('Describe {thing} as a JSON object with the keys "item" and "colour". Reply with the JSON only.',
                  {"type": "json_keys", "keys": ["item", "colour"]}, "colours"),
}
HELDOUT_THINGS = 15  # x 4 formats = 60 held-out prompts


def check_for(thing: str, form: dict, content: str) -> dict:
    colours, names = THINGS[thing]
    # partial: a sample right in form or in content only scores 0.5, so best-of-n pairs it above one right in neither
    # even in a round where no sample is right in both (a pass still needs both).
    return {"type": "all", "partial": True,
            "checks": [form, {"type": "mentions", "words": colours if content == "colours" else names}]}


def rows(things: list[str]) -> list[dict]:
    return [{"prompt": template.format(thing=thing), "check": check_for(thing, form, content), "task": task,
             "thing": thing}
            for thing in things for task, (template, form, content) in TASKS.items()]


def main() -> None:
    things = sorted(THINGS)
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
