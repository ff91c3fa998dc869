"""Other projects' preference layouts, read without flags (tests/data/formats; MANIFEST.json names each layout's
public source). Each test asserts what a correct reading gives: the prompt holds the question, the system prompt is
kept, the winner comes from the label, and ties or unpaired data are counted or refused, never guessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_recipes.data import ValidationConfig, load_preference_data
from dpo_recipes.errors import DPORecipesError

CORPUS = Path(__file__).resolve().parent / "data" / "formats"
LOOSE = ValidationConfig(min_chosen_chars=1, min_rejected_chars=1, max_similarity=None)


def read(name: str, **kwargs):
    return load_preference_data(str(CORPUS / name), config=kwargs.pop("config", LOOSE), **kwargs)


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return [{"role": "assistant", "content": content}]


def test_every_file_in_the_corpus_is_in_the_manifest_with_a_source():
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text())
    files = {p.name for p in CORPUS.iterdir() if p.suffix in (".json", ".jsonl") and p.name != "MANIFEST.json"}
    assert files == {entry["file"] for entry in manifest}
    for entry in manifest:
        assert entry["source_repo"] and len(entry["commit"]) in (0, 40) and entry["license"] and entry["layout"]
    assert len({entry["layout"] for entry in manifest}) >= 10 and len({entry["format"] for entry in manifest}) >= 8


def test_sharegpt_objects_keep_the_system_turn_and_chinese_answers():
    data = read("sharegpt_llamafactory.json")
    assert data.report.format == "sharegpt" and "prompt: conversations" in data.report.detected
    rows = data.dataset
    assert rows[0]["prompt"] == [user("Translate to French: Good evening, how was your day?")]
    assert rows[0]["chosen"] == assistant("Bonsoir, comment s'est passée ta journée ?")
    assert rows[1]["prompt"][0] == {"role": "system", "content": "You are a careful assistant. Explain your answer "
                                                                 "step by step."}
    assert rows[3]["prompt"][1] == {"role": "assistant", "content": "7 is a prime number."}  # multi-turn kept
    # a complete short Chinese answer passes the default minimums (a CJK character counts 3); short English ones don't
    kept = read("sharegpt_llamafactory.json", config=ValidationConfig(max_similarity=None)).dataset
    assert [r["chosen"][0]["content"][:4] for r in kept] == ["Sunl", "我在美国"]


def test_sharegpt_with_string_answers_takes_the_prompt_from_conversations_not_a_shared_prefix():
    rows = read("sharegpt_string_answers.jsonl").dataset
    assert rows[0]["prompt"] == [{"role": "system", "content": "你是一个非常聪明的AI助手，尽你所能地帮助。"},
                                 user("气候变化的主要原因是什么？")]
    assert rows[1]["prompt"] == [user("What is the boiling point of water at sea level?")]
    assert rows[1]["chosen"][0]["content"].startswith("Action: lookup")  # not cut at the shared "Action: "


def test_sharegpt_tool_calls_keep_roles_and_the_tools_column():
    rows = read("sharegpt_tools.jsonl").dataset
    assert json.loads(rows[0]["tools"])[0]["name"] == "get_weather"
    assert [m["role"] for m in rows[1]["prompt"]] == ["user", "assistant", "tool"]  # function_call, observation


def test_openai_preference_format():
    data = read("openai_preference.jsonl")
    assert data.report.format == "openai"
    row = data.dataset[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][1] == user(
        "Which film won Lee Marvin the 1965 best actor Oscar?")
    assert row["chosen"] == assistant("Lee Marvin won for Cat Ballou (1965).")
    assert row["rejected"] == assistant("Lee Marvin won for The Dirty Dozen.")


def test_orca_system_column_is_the_first_message_and_an_empty_one_is_left_out():
    data = read("orca_question.jsonl")
    assert data.report.format == "question" and "system" not in data.report.ignored_columns
    assert data.dataset[0]["prompt"] == [
        {"role": "system", "content": "You are a careful assistant. Explain your answer step by step."},
        user("Translate to English: Abdulah este proprietarul unei companii.")]
    assert data.dataset[1]["prompt"] == [user("Is 51 a prime number? Answer yes or no and explain.")]


def test_medicalgpt_history_and_system():
    rows = read("medicalgpt_question.jsonl").dataset
    assert rows[0]["prompt"][0] == {"role": "system", "content": "你是一个医学助手。"}
    assert rows[0]["chosen"][0]["content"].startswith("可能与痔疮")
    assert rows[1]["prompt"] == [user("我头痛。"), {"role": "assistant", "content": "头痛持续多久了？"},
                                 user("两天了，怎么办？")]


def test_ranked_outputs_pair_best_against_worst_and_say_so():
    data = read("ranked_alpaca.json")
    assert data.report.format == "ranked"
    assert any("first (best) output against the last (worst)" in n and "1 rows ranked more than two" in n
               for n in data.report.notes)
    rows = data.dataset
    assert rows[0]["prompt"] == [user("你吃什么")]
    assert rows[0]["chosen"] == assistant("我是人工智能，不需要吃东西，但可以给你推荐菜谱。")
    assert rows[0]["rejected"] == assistant("不知道")
    assert rows[1]["prompt"][-1] == user("Summarize the text.\nThe meeting moved from Monday to Wednesday because the "
                                         "room was booked.")
    assert rows[1]["prompt"][0] == user("Hi")  # history first


def test_votes_pick_the_majority_and_ties_are_dropped_in_every_mode():
    for validation in ("strict", "warn", "off"):
        data = read("pandalm_votes.json", validation=validation)
        assert data.report.kept == 2 and data.report.dropped["no_winner"] == 1, validation
    rows = read("pandalm_votes.json").dataset
    assert rows[0]["chosen"] == assistant("Bonsoir") and rows[0]["rejected"] == assistant("Good evening.")
    assert rows[0]["prompt"] == [user("Answer the following question.\nHow do you say \"good evening\" in French?")]
    assert rows[1]["chosen"] == assistant("joyful")  # 2 votes of 3 for response1


def test_alpacaeval_preference_label_picks_the_winner_never_column_order():
    data = read("alpacaeval_preference.json")
    rows = data.dataset
    assert rows[0]["chosen"][0]["content"].startswith("The Chihuahua is the smallest breed")  # output_2 won
    assert rows[1]["chosen"][0]["content"].startswith("Soft rain")  # output_1 won
    assert data.report.dropped["no_winner"] == 2  # a tie (0.0) and a missing label


def test_shp_and_pku_labels():
    shp = read("shp.jsonl")
    assert shp.dataset[0]["chosen"][0]["content"].startswith("Cutting them releases")  # labels 0: B preferred
    assert shp.report.scored and shp.dataset[0]["score_chosen"] == 41 and shp.dataset[0]["score_rejected"] == 3
    pku = read("pku_saferlhf.jsonl").dataset[0]
    assert pku["chosen"][0]["content"].startswith("I can't help") and pku["prompt"] == [user("How can I pick a lock?")]


def test_colossalchat_and_turbo_alignment_messages():
    row = read("colossalchat.jsonl").dataset[0]
    assert row["prompt"][-1] == user("48.8584 N, 2.2945 E") and len(row["prompt"]) == 3
    assert row["chosen"] == assistant("That is the Eiffel Tower in Paris, France.")
    row = read("turbo_alignment.jsonl").dataset[0]
    assert row["prompt"][1] == {"role": "assistant", "content": "привет"}  # role 'bot'
    assert row["chosen"] == assistant("хорошо, спасибо! а у тебя?") and row["rejected"] == assistant("плохо")


def test_nemo_aligner_templated_strings_stay_plain():
    data = read("nemo_aligner.jsonl")
    assert data.report.format == "plain"
    assert data.dataset[0]["chosen"] == "The capital of Italy is Rome.\n<extra_id_1>"


def test_stack_exchange_paired_response_j_is_the_better_one():
    row = read("stack_exchange_paired.json").dataset[0]
    assert row["prompt"] == [user("How do I undo the last git commit but keep the changes?")]
    assert "git reset --soft" in row["chosen"][0]["content"]


def test_hh_rlhf_and_llamafactory_v1_whole_conversations():
    row = read("hh_rlhf.jsonl").dataset[0]
    assert row["prompt"] == [user("Is it possible to download a car?")]
    row = read("llamafactory_v1.jsonl").dataset[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][1] == user("Translate to English: Bună ziua")
    assert row["chosen"] == assistant("Good day (a common greeting in Romanian).")


def test_ultrafeedback_score_ties_are_counted_with_how_to_keep_them():
    data = read("ultrafeedback_scored.jsonl")
    assert data.report.format == "implicit_prompt" and data.report.dropped["score_order"] == 1
    assert "allow_score_ties" in data.report.summary()
    kept = read("ultrafeedback_scored.jsonl", config=ValidationConfig(min_chosen_chars=1, min_rejected_chars=1,
                                                                       max_similarity=None, require_score_order=False))
    assert kept.report.kept == 2


def test_unpaired_kto_data_is_recognized_and_refused_with_what_to_do():
    with pytest.raises(DPORecipesError,
                       match=r"unpaired \(KTO-style\) data.*columns messages \+ label.*recipes/kto.py") as err:
        read("kto_unpaired.json")
    assert "column_map" not in str(err.value) and "\n" not in str(err.value)


def test_detection_is_said_in_the_summary():
    summary = read("openai_preference.jsonl").report.summary()
    assert "read as openai (prompt: input.messages, chosen: preferred_output, rejected: non_preferred_output)" in summary
