"""Docs that cannot rot silently: every relative link and image in README.md and docs/ resolves (anchors included),
every flag a command block gives a recipe or a `dpo-recipes` command exists in that parser, and the README stays a
landing page."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from conftest import ROOT, load_recipe

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert broken == [], f"{page.name}: " + "; ".join(broken)


def commands(page: Path) -> list[list[str]]:
    """The shell commands in a page's ```bash blocks, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                try:
                    found.append(shlex.split(line))
                except ValueError:
                    continue
    return found


@cache
def recipe_flags(recipe: str) -> frozenset[str]:
    from transformers import HfArgumentParser
    from trl import DPOConfig

    from dpo_recipes.check.preflight import RECIPES, recipe_config_class
    from dpo_recipes.config import RecipeArguments, RecipeModelConfig

    if recipe in RECIPES:
        types = (RecipeArguments, recipe_config_class(recipe), RecipeModelConfig)
    elif recipe == "iterative_dpo":
        types = (load_recipe("iterative_dpo").IterativeArguments, DPOConfig, RecipeModelConfig)
    else:
        from dpo_recipes.pairs.config import PairsArguments

        types = (PairsArguments,)
    parser = HfArgumentParser(types)
    return frozenset(o for a in parser._actions for o in a.option_strings) | {"--config"}


@cache
def command_flags(command: str) -> frozenset[str]:
    from dpo_recipes.cli import _build_parser

    subparsers = next(a for a in _build_parser()._actions if a.dest == "command")
    return frozenset(o for a in subparsers.choices[command]._actions for o in a.option_strings)


def flags_used(words: list[str]) -> list[tuple[str, list[str]]]:
    """(the parser, the flags it is given) for each parser a command line feeds: a recipe's, a `dpo-recipes`
    command's; [] for a command that runs neither."""
    def flags(part):
        return [w.split("=")[0] for w in part if w.startswith("--") and w != "--"]

    for i, word in enumerate(words):
        match = re.search(r"recipes/(\w+)\.py$", word)
        if match and (words[0] in ("python", "accelerate") or words[0].endswith(("python", "python3"))):
            return [(f"recipe:{match.group(1)}", flags(words[i + 1:]))]
    if words[:1] != ["dpo-recipes"] or len(words) < 2:
        return []
    if words[1] == "train":  # `train RECIPE [its own flags] [the recipe's flags]`
        own = command_flags("train")
        return [("command:train", [f for f in flags(words[3:]) if f in own]),
                (f"recipe:{words[2]}", [f for f in flags(words[3:]) if f not in own])]
    mine, _, theirs = _split(words[2:])
    recipe = words[words.index("--recipe") + 1] if "--recipe" in words else "dpo_lora"
    return [(f"command:{words[1]}", flags(mine))] + ([(f"recipe:{recipe}", flags(theirs))] if theirs else [])


def _split(words: list[str]) -> tuple[list[str], None, list[str]]:
    """Words before a lone `--`, and after it (`dpo-recipes check CONFIG -- --learning_rate 1e-6`)."""
    if "--" not in words:
        return words, None, []
    at = words.index("--")
    return words[:at], None, words[at + 1:]


def test_every_flag_a_command_block_shows_exists():
    unknown = []
    for page in PAGES:
        for words in commands(page):
            for kind, flags in flags_used(words):
                known = recipe_flags(kind[7:]) if kind.startswith("recipe:") else command_flags(kind[8:])
                unknown += [f"{page.name}: {' '.join(words)}: {flag}" for flag in flags if flag not in known]
    assert unknown == [], "\n".join(unknown)


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for section in ("## Install", "## Quickstart", "## Recipes", "## Your data", "## Documentation"):
        assert section in text
    assert "bash quickstart.sh train" in text and "bash quickstart.sh test" in text


def test_the_flag_check_reads_each_parser_a_command_feeds():
    [(kind, flags)] = flags_used(["python", "recipes/dpo_lora.py", "--lora_rnak", "8", "--max_steps=3"])
    assert kind == "recipe:dpo_lora" and flags == ["--lora_rnak", "--max_steps"]
    assert "--lora_rnak" not in recipe_flags("dpo_lora") and "--max_steps" in recipe_flags("dpo_lora")
    assert flags_used(["dpo-recipes", "train", "kto", "--num_processes", "2", "--beta", "0.1"]) == [
        ("command:train", ["--num_processes"]), ("recipe:kto", ["--beta"])]
    assert flags_used(["dpo-recipes", "check", "c.yaml", "--recipe", "orpo", "--", "--beta", "0.1"]) == [
        ("command:check", ["--recipe"]), ("recipe:orpo", ["--beta"])]
