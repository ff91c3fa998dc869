"""dpo_recipes.data.validate: each rule drops (and counts) exactly what it should; modes; the report."""

import json

import pytest

from dpo_recipes.data import RULES, ValidationConfig, load_preference_data
from dpo_recipes.errors import DPORecipesError

C = "The capital of France is Paris, on the river Seine, home to roughly two million."
R = "I think it is Lyon, but do not quote me."
P = "What is the capital of France?"


def _pair(i=0, **over):
    row = {"prompt": f"{P} ({i})", "chosen": C, "rejected": R}
    row.update(over)
    return row


def _load(tmp_path, rows, **kw):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw.setdefault("min_rows", 0)
    return load_preference_data(str(path), **kw)


def _dropped(report):
    """The rules that dropped rows, with their counts, after checking that kept + dropped add up to the total."""
    assert report.kept + sum(report.dropped.values()) == report.total_rows, report.dropped
    return {rule: n for rule, n in report.dropped.items() if n}


@pytest.mark.parametrize("rule, bad", [
    ("empty_field", {"chosen": "   \n\t "}),
    ("empty_field", {"rejected": ""}),
    ("empty_field", {"rejected": None}),
    ("missing_prompt", {"prompt": ""}),
    ("missing_prompt", {"prompt": None}),
    ("identical", {"rejected": " The capital of France is Paris,\n on the river Seine,  home to roughly two million."}),
    ("too_short", {"chosen": "Paris is the capital of France."}),  # 31 chars < 50
    ("too_short", {"rejected": "Lyon, maybe."}),                     # 12 chars < 20
    ("too_similar", {"rejected": C.replace("Paris", "Pariz")}),
])
def test_each_rule_drops_and_counts_its_row(tmp_path, rule, bad):
    r = _load(tmp_path, [_pair(0), _pair(1, **bad), _pair(2)])
    assert _dropped(r.report) == {rule: 1}
    assert r.report.examples[rule][0]["row"] == 2 and r.report.examples[rule][0]["where"] == "line 2"
    assert len(r.dataset) == 2


def test_row_missing_a_key_that_other_rows_have_is_counted(tmp_path):
    r = _load(tmp_path, [_pair(0), {"prompt": P, "chosen": C}])
    assert _dropped(r.report) == {"empty_field": 1}


def test_exact_duplicates_keep_the_first_copy(tmp_path):
    r = _load(tmp_path, [_pair(0), _pair(1), _pair(0), _pair(0)])
    assert _dropped(r.report) == {"duplicate": 2}
    assert r.report.examples["duplicate"][0]["detail"] == "same pair as line 1"
    assert r.dataset["prompt"] == [f"{P} (0)", f"{P} (1)"]


def test_conversational_duplicates_compare_roles_and_content(tmp_path):
    def conv(i, role="user"):
        return {"prompt": [{"role": role, "content": P}], "chosen": [{"role": "assistant", "content": C}],
                "rejected": [{"role": "assistant", "content": R + str(i)}]}
    r = _load(tmp_path, [conv(0), conv(0), conv(0, role="system")])
    assert _dropped(r.report) == {"duplicate": 1}


def test_score_order_drops_ties_and_inversions_and_missing_scores(tmp_path):
    rows = [_pair(0, score_chosen=5, score_rejected=1), _pair(1, score_chosen=3, score_rejected=3),
            _pair(2, score_chosen=1.0, score_rejected=4.5), _pair(3, score_chosen=None, score_rejected=1)]
    r = _load(tmp_path, rows)
    assert r.report.dropped["score_order"] == 2 and r.report.dropped["missing_score"] == 1 and r.report.kept == 1
    assert r.report.examples["score_order"][1]["detail"] == "score_chosen 1 <= score_rejected 4.5"
    r = _load(tmp_path, rows, config=ValidationConfig(require_score_order=False))
    assert r.report.kept == 3


def test_similarity_threshold_is_strictly_greater_and_configurable(tmp_path):
    from rapidfuzz.distance import Indel

    near = C[:-13] + "three million."
    sim = Indel.normalized_similarity(C, near)
    assert 0.95 < sim < 0.96
    r = _load(tmp_path, [_pair(0, rejected=near)], config=ValidationConfig(max_similarity=sim))
    assert r.report.kept == 1  # equal to the maximum is allowed
    r = _load(tmp_path, [_pair(0, rejected=near)], config=ValidationConfig(max_similarity=sim - 1e-6))
    assert _dropped(r.report) == {"too_similar": 1}
    assert r.report.examples["too_similar"][0]["detail"].startswith("similarity 0.")
    # The default 0.9 keeps a pair that shares its frame but differs in substance (similarity ~0.85).
    r = _load(tmp_path, [_pair(0, rejected=C.replace("two million", "five hundred thousand"))])
    assert r.report.kept == 1
    r = _load(tmp_path, [_pair(0, rejected=near)], config=ValidationConfig(max_similarity=None))
    assert r.report.kept == 1


def test_a_row_is_charged_to_its_first_failing_rule_only(tmp_path):
    # empty prompt AND too short AND identical: counted once, as missing_prompt.
    r = _load(tmp_path, [_pair(0, prompt=" ", chosen="x", rejected="x")])
    assert _dropped(r.report) == {"missing_prompt": 1}


def test_thresholds_are_configurable_for_short_anchor_answers(tmp_path):
    rows = [_pair(0, chosen="Yes, Paris.", rejected="No idea, sorry.")]
    assert _load(tmp_path, rows).report.kept == 0
    cfg = ValidationConfig(min_chosen_chars=5, min_rejected_chars=5)
    assert _load(tmp_path, rows, config=cfg).report.kept == 1


def test_warn_keeps_everything_and_reports_what_strict_would_drop(tmp_path):
    rows = [_pair(0), _pair(1, chosen=""), _pair(0)]
    r = _load(tmp_path, rows, validation="warn")
    assert r.report.kept == 3 and len(r.dataset) == 3 and sum(r.report.dropped.values()) == 0
    assert r.report.flagged["empty_field"] == 1 and r.report.flagged["duplicate"] == 1
    assert "would drop" in r.report.summary()


def test_off_skips_row_rules(tmp_path):
    r = _load(tmp_path, [_pair(0), _pair(1, chosen=""), _pair(0)], validation="off")
    assert r.report.kept == 3 and sum(r.report.flagged.values()) == 0


def test_strict_with_nothing_left_raises_unless_min_rows_is_0(tmp_path):
    with pytest.raises(DPORecipesError, match=r"only 0 of 1 rows pass validation"):
        _load(tmp_path, [_pair(0, chosen="")], min_rows=1)


def test_kept_plus_dropped_is_total_on_a_messy_file(tmp_path):
    rows = [_pair(i % 7, chosen=C if i % 3 else C[: i % 60], rejected=R if i % 5 else C) for i in range(200)]
    r = _load(tmp_path, rows)
    assert r.report.kept + sum(r.report.dropped.values()) == r.report.total_rows == 200
    assert set(r.report.dropped) == set(RULES) and len(r.dataset) == r.report.kept


def test_unknown_mode_and_bad_thresholds_are_errors(tmp_path):
    with pytest.raises(DPORecipesError, match="choose one of strict, warn, off"):
        _load(tmp_path, [_pair()], validation="lenient")
    with pytest.raises(DPORecipesError, match="max_similarity"):
        ValidationConfig(max_similarity=90)


# --- token-based rules and truncation ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per whitespace/punctuation-separated word; no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]")


def test_token_minimum_lengths(tmp_path, word_tokenizer):
    rows = [_pair(0), _pair(1, chosen="one two three four five six seven eight nine ten eleven twelve thirteen")]
    cfg = ValidationConfig(min_chosen_tokens=14)
    r = _load(tmp_path, rows, config=cfg, tokenizer=word_tokenizer)
    assert _dropped(r.report) == {"too_short": 1}
    assert "13 tokens (min 14)" in r.report.examples["too_short"][0]["detail"]
    with pytest.raises(DPORecipesError, match="need a tokenizer"):
        _load(tmp_path, rows, config=cfg)


def test_truncation_is_counted_and_kept_unless_asked(tmp_path, word_tokenizer):
    long_pair = _pair(1, chosen=C + " more" * 40)  # prompt 7 + chosen 56 words + eos
    r = _load(tmp_path, [_pair(0), long_pair], tokenizer=word_tokenizer, max_length=40)
    assert r.report.kept == 2 and r.report.warnings["truncated"] == 1 and sum(r.report.dropped.values()) == 0
    assert r.report.examples["truncated"][0]["where"] == "line 2" and "max_length=40" in r.report.summary()
    r = _load(tmp_path, [_pair(0), long_pair], tokenizer=word_tokenizer, max_length=40,
              config=ValidationConfig(drop_truncated=True))
    assert _dropped(r.report) == {"truncated": 1}


def test_truncation_without_tokenizer_is_noted_not_guessed(tmp_path):
    r = _load(tmp_path, [_pair(0)], max_length=10)
    assert r.report.warnings == {} and "no tokenizer" in r.report.notes[0]


# --- the report ----------------------------------------------------------------------------------------------------

def test_report_save_is_atomic_and_complete(tmp_path, monkeypatch):
    r = _load(tmp_path, [_pair(0), _pair(1, chosen="")])
    out = r.report.save(tmp_path / "run" / "report.json")
    data = json.loads(out.read_text())
    for key in ("total_rows", "kept", "dropped", "format", "examples", "config", "validation"):
        assert key in data
    assert data["examples"]["empty_field"][0]["row"] == 2

    import dpo_recipes.jsonio as jsonio

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(jsonio.json, "dump", boom)
    with pytest.raises(OSError):
        r.report.save(tmp_path / "run" / "second.json")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.json"]


def test_summary_fits_one_screen(tmp_path):
    rows = [_pair(i, chosen="" if i % 2 else C) for i in range(50)]
    summary = _load(tmp_path, rows).report.summary()
    assert len(summary.splitlines()) <= 20 and "empty_field" in summary and "kept 25 (50.0%)" in summary


def test_truncation_renders_conversational_prompts_with_the_chat_template(tmp_path, word_tokenizer):
    word_tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}"
                                    "{% if add_generation_prompt %}<assistant> {% endif %}")
    row = {"prompt": [{"role": "user", "content": P}], "chosen": [{"role": "assistant", "content": C}],
           "rejected": [{"role": "assistant", "content": R}]}
    try:
        # 6 prompt words + <user> + <assistant> = 8; chosen 15 words (this template adds no EOS, and TRL adds none to
        # conversations): 23 > 22 (21 without the template).
        r = _load(tmp_path, [row], tokenizer=word_tokenizer, max_length=22)
    finally:
        word_tokenizer.chat_template = None
    assert r.report.warnings["truncated"] == 1
    assert r.report.examples["truncated"][0]["detail"] == "prompt 8 + completion 15 = 23 tokens > 22"


def test_prompt_answer_token_boundary_merges_are_counted_not_dropped(tmp_path):
    """'... is ' + 'Paris' tokenizes as 'is', ' ' alone but 'is', ' Paris' together: TRL then trains on a prompt
    the model never sees when it answers. Counted (a warning with examples), never dropped."""
    from dpo_recipes.data import load_preference_data
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path("smollm2-135m-instruct"))
    rows = [{"prompt": "The capital of France is ", "chosen": "Paris, a city on the Seine with two million people.",
             "rejected": "Lyon, which is the third largest city in the country."},
            {"prompt": "The capital of France is", "chosen": " Paris, a city on the Seine with two million people.",
             "rejected": " Lyon, which is the third largest city in the country."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_preference_data(str(path), tokenizer=tokenizer)
    assert data.report.kept == 2
    assert data.report.warnings["prompt_boundary"] == 1
    assert [e["where"] for e in data.report.examples["prompt_boundary"]] == ["line 1"]
    assert "not a prefix of prompt + answer tokens" in data.report.summary()
    assert "prompt_boundary" not in load_preference_data(str(path)).report.warnings  # needs a tokenizer
