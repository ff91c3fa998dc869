"""dpo_recipes.data.formats: detection and normalization of each format, column mapping, forced formats."""

import json

import pytest

from dpo_recipes.data import load_preference_data
from dpo_recipes.data.formats import parse_column_map
from dpo_recipes.errors import DPORecipesError

A1 = "Paris is the capital of France; it sits on the Seine and has about two million people."
A2 = "Lyon, I believe, though I am not entirely sure."
USER = {"role": "user", "content": "What is the capital of France?"}


def _write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(tmp_path, rows, **kw):
    return load_preference_data(_write(tmp_path, rows), validation=kw.pop("validation", "off"), **kw)


def test_plain_stays_strings(tmp_path):
    r = _load(tmp_path, [{"prompt": "Capital of France?", "chosen": A1, "rejected": A2, "meta": 1}])
    assert r.report.format == "plain" and r.report.ignored_columns == ["meta"]
    assert r.dataset.column_names == ["prompt", "chosen", "rejected"]
    assert r.dataset[0] == {"prompt": "Capital of France?", "chosen": A1, "rejected": A2}


def test_conversational_stays_messages_and_keeps_only_role_and_content(tmp_path):
    row = {"prompt": [{"role": "system", "content": "Be brief."}, USER],
           "chosen": [{"role": "assistant", "content": A1, "name": "bot"}],
           "rejected": [{"role": "assistant", "content": A2}], "kind": "identity"}
    r = _load(tmp_path, [row])
    assert r.report.format == "conversational"
    assert r.dataset[0]["prompt"] == row["prompt"]
    assert r.dataset[0]["chosen"] == [{"role": "assistant", "content": A1}]


def test_conversational_prompt_string_and_content_parts_are_wrapped(tmp_path):
    row = {"prompt": "What is the capital of France?",
           "chosen": [{"role": "assistant", "content": [{"type": "text", "text": A1}]}],
           "rejected": [{"role": "assistant", "content": A2}]}
    r = _load(tmp_path, [row])
    assert r.report.format == "conversational"
    assert r.dataset[0]["prompt"] == [USER] and r.dataset[0]["chosen"][0]["content"] == A1


def test_implicit_prompt_is_the_shared_prefix_ending_on_a_user_turn(tmp_path):
    history = [USER, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    row = {"chosen": history + [{"role": "assistant", "content": A1}],
           "rejected": history + [{"role": "assistant", "content": A2}]}
    r = _load(tmp_path, [row])
    assert r.report.format == "implicit_prompt"
    assert r.dataset[0]["prompt"] == history
    assert r.dataset[0]["chosen"] == [{"role": "assistant", "content": A1}]


def test_implicit_prompt_ultrafeedback_shape_with_scores(tmp_path):
    row = {"prompt": "What is the capital of France?", "prompt_id": "x",
           "chosen": [USER, {"role": "assistant", "content": A1}],
           "rejected": [USER, {"role": "assistant", "content": A2}], "score_chosen": 8.0, "score_rejected": 3}
    r = _load(tmp_path, [row])
    assert (r.report.format, r.report.scored) == ("implicit_prompt", True)
    assert r.dataset[0]["prompt"] == [USER]
    assert (r.dataset[0]["score_chosen"], r.dataset[0]["score_rejected"]) == (8.0, 3.0)


def test_implicit_prompt_with_identical_answers_keeps_the_user_turn_as_prompt(tmp_path):
    conv = [USER, {"role": "assistant", "content": A1}]
    r = _load(tmp_path, [{"chosen": conv, "rejected": conv}], validation="strict", min_rows=0)
    assert r.report.dropped["identical"] == 1


def test_implicit_prompt_forced_on_text_cuts_at_a_word_boundary(tmp_path):
    row = {"chosen": "Q: what is 2+2? A: four", "rejected": "Q: what is 2+2? A: five"}
    r = _load(tmp_path, [row], data_format="implicit_prompt")
    assert r.dataset[0] == {"prompt": "Q: what is 2+2? A:", "chosen": " four", "rejected": " five"}


def test_hh_rlhf_transcripts_become_messages_up_to_the_last_assistant_turn(tmp_path):
    head = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Capital of France?"
    r = _load(tmp_path, [{"chosen": head + "\n\nAssistant: " + A1, "rejected": head + "\n\nAssistant: " + A2}])
    assert r.report.format == "hh_rlhf"
    assert r.dataset[0]["prompt"] == [{"role": "user", "content": "Hi there."},
                                      {"role": "assistant", "content": "Hello! How can I help?"},
                                      {"role": "user", "content": "Capital of France?"}]
    assert r.dataset[0]["chosen"] == [{"role": "assistant", "content": A1}]
    assert r.dataset[0]["rejected"] == [{"role": "assistant", "content": A2}]


def test_hh_rlhf_rows_with_different_histories_are_counted_not_kept(tmp_path):
    rows = [{"chosen": "\n\nHuman: A?\n\nAssistant: " + A1, "rejected": "\n\nHuman: B?\n\nAssistant: " + A2},
            {"chosen": "\n\nHuman: A?\n\nAssistant: " + A1, "rejected": "no transcript markers at all here"}]
    r = _load(tmp_path, rows, validation="strict", min_rows=0)
    assert r.report.dropped["prompt_mismatch"] == 1 and r.report.dropped["missing_prompt"] == 1


def test_column_map_string_and_dict(tmp_path):
    assert parse_column_map("question:prompt, good:chosen,bad:rejected") == {
        "question": "prompt", "good": "chosen", "bad": "rejected"}
    path = _write(tmp_path, [{"question": "Capital of France?", "good": A1, "bad": A2}])
    r = load_preference_data(path, column_map={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert r.dataset[0]["chosen"] == A1
    with pytest.raises(DPORecipesError, match="same target"):
        parse_column_map("a:chosen,b:chosen")
    with pytest.raises(DPORecipesError, match="not 'source:target'"):
        parse_column_map("question")


def test_forcing_plain_on_conversational_data_names_the_row_and_field(tmp_path):
    with pytest.raises(DPORecipesError, match=r"line 1: field 'prompt': expected text, got a list.*conversational"):
        _load(tmp_path, [{"prompt": [USER], "chosen": [{"role": "assistant", "content": A1}],
                          "rejected": [{"role": "assistant", "content": A2}]}], data_format="plain")


def test_wrong_type_deep_in_the_file_is_found(tmp_path):
    rows = [{"prompt": "p", "chosen": A1, "rejected": A2}] * 5 + [{"prompt": ["x"], "chosen": A1, "rejected": A2}]
    with pytest.raises(DPORecipesError, match=r"line 6: field 'prompt'"):
        _load(tmp_path, rows)


def test_csv_scores_are_parsed_as_numbers(tmp_path):
    path = tmp_path / "d.csv"
    c, r = A1.replace(",", ""), A2.replace(",", "")
    path.write_text(f"prompt,chosen,rejected,score_chosen,score_rejected\nQ?,{c},{r},9,2.5\n")
    r = load_preference_data(str(path))
    assert (r.dataset[0]["score_chosen"], r.dataset[0]["score_rejected"]) == (9.0, 2.5)
