"""Make preference pairs from prompts: correction (a verifier + teacher / reference / rewrite) and best/worst-of-n.

    from dpo_recipes.pairs import load_prompts, load_policy, make_pairs, save_pairs, heldout_score

    prompts = load_prompts("prompts.jsonl")                        # prompt, optional reference and per-row check
    model, tokenizer, name = load_policy(None)                     # the embedded SmolLM2, a folder, or base + adapter
    result = make_pairs(model, tokenizer, prompts, mode="correction", verifier="numeric",
                        chosen_source="reference", work_file="out/pairs.work.jsonl")
    summary, report = save_pairs(result, "out/pairs.jsonl")        # atomic; validated; report + summary beside it
    held = heldout_score(model, tokenizer, heldout_prompts, "numeric")   # held.score: share of greedy answers passing

Modules, in the order data flows: `prompts` (the input file), `numbers` + `rules` + `verifiers` (checks),
`scorers` (best-of-n scores: verifier, reward model, function), `generate` (batched, per-prompt-seeded answers),
`workfile` (resumable answers), `build` (answers -> pairs, every skip counted), `make` (`make_pairs`), `output`
(files, validation, summary), `heldout` (a verifier pass rate), `policy` (loading a model or base + adapter),
`config` (the recipe's arguments).
"""

from dpo_recipes.pairs.heldout import HeldoutScore, heldout_score
from dpo_recipes.pairs.make import MODES, PairsResult, make_pairs
from dpo_recipes.pairs.output import check_output, pairs_paths, save_pairs, summary_text
from dpo_recipes.pairs.policy import load_policy
from dpo_recipes.pairs.prompts import PromptRow, load_prompts
from dpo_recipes.pairs.rules import RULES
from dpo_recipes.pairs.scorers import Scorer, build_scorer
from dpo_recipes.pairs.verifiers import Verifier, build_verifier

__all__ = ["MODES", "RULES", "HeldoutScore", "PairsResult", "PromptRow", "Scorer", "Verifier", "build_scorer",
           "build_verifier", "check_output", "heldout_score", "load_policy", "load_prompts", "make_pairs",
           "pairs_paths", "save_pairs", "summary_text"]
