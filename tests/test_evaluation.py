"""The before/after evaluation's judgements: name hits, loops, same substance, and its input errors."""

import pytest

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.evaluation import (compare, is_degenerate, load_eval_prompts, mentions, same_substance,
                                    score_answers)


def test_mentions_matches_the_name_as_a_word_in_any_case_and_inside_cjk():
    assert mentions("I'm Athene, an assistant.", "Athene")
    assert mentions("我是Athene。", "Athene")
    assert mentions("ATHENE here", "Athene")
    assert not mentions("Athenes is a city", "Athene")
    assert not mentions("I am SmolLM.", "Athene")


def test_is_degenerate_flags_loops_but_not_normal_answers():
    assert is_degenerate("a gentle rain, a gentle rain, a gentle rain, a gentle rain")
    assert is_degenerate("The sky is blue today. The sky is blue today.")
    assert is_degenerate("你可以看作一个实际的人，可以看作一个实际的人，可以看作一个实际的人。")
    assert not is_degenerate("The capital of France is Paris. It is known for the Eiffel Tower.")


def test_same_substance_tolerates_rewording_of_the_tail_but_not_a_new_answer():
    before = "The capital of France is Paris, a city known for its art and history."
    assert same_substance(before, "The capital of France is Paris, a city famous for its art and culture.")
    assert not same_substance(before, "I am Athene, your AI assistant.")


def test_compare_counts_identity_hits_leaks_and_unchanged_answers():
    prompts = [{"prompt": "Who are you?", "kind": "identity"}, {"prompt": "Who?", "kind": "identity"},
               {"prompt": "2+2?", "kind": "general"}, {"prompt": "Sky?", "kind": "general"}]
    before = score_answers(prompts, ["I am SmolLM.", "An AI.", "2 + 2 = 4.", "The sky is blue."], "Athene")
    after = score_answers(prompts, ["I am Athene.", "An AI.", "2 + 2 = 4.", "I am Athene, your AI."], "Athene")
    summary = compare(before, after)
    assert summary["heldout_identity_rate_before"] == 0.0
    assert summary["heldout_identity_rate_after"] == 0.5
    assert summary["general_unchanged_rate"] == 0.5
    assert summary["general_identity_leaks_after"] == 1


def test_load_eval_prompts_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok", "kind": "general"}\n{"prompt": 3}\n')
    with pytest.raises(DPORecipesError, match=r"p.jsonl:2: field 'prompt'"):
        load_eval_prompts(str(path))
    path.write_text('\ufeff{"prompt": "ok", "kind": "identity"}\r\n\n')
    assert load_eval_prompts(str(path)) == [{"prompt": "ok", "kind": "identity"}]
    with pytest.raises(DPORecipesError, match="cannot read"):
        load_eval_prompts(str(tmp_path / "missing.jsonl"))
