"""Tokenize once: validation tokenizes each pair as TRL's DPOTrainer will, and the trainer uses those ids.

The ids must be TRL's own (compared here with TRL's `_prepare_dataset` on plain, conversational, multi-turn, tools and
boundary-merging pairs); RecipeDPOTrainer must not tokenize a second time, and must fall back to TRL's tokenization
when the ids differ from it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from datasets import Dataset
from test_trainer import config, tiny_model, tiny_tokenizer
from trl import DPOTrainer

from dpo_recipes.data import ValidationConfig, load_preference_data
from dpo_recipes.data.lengths import TOKEN_COLUMNS
from dpo_recipes.train.trainer import RecipeDPOTrainer

TOOLS = [{"type": "function", "function": {"name": "add", "description": "add two numbers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]


def rows(kind: str, n: int = 12) -> list[dict]:
    out = []
    for i in range(n):
        if kind == "plain":
            out.append({"prompt": f"Q{i}: the capital of France is", "chosen": f" Paris{'!' * (i % 3)} indeed",
                        "rejected": f"Rome, number {i * 7}"})
            continue
        history = [{"role": "user", "content": f"Q{i}: who are you?"}]
        if kind == "multi-turn" and i % 2:
            history += [{"role": "assistant", "content": "A model."}, {"role": "user", "content": f"and {i}?"}]
        row = {"prompt": history, "chosen": [{"role": "assistant", "content": "I am Ada" + "!" * (i % 3)}],
               "rejected": [{"role": "assistant", "content": f"no, {i * 7}"}]}
        if kind == "tools":
            row["tools"] = json.dumps(TOOLS if i % 2 else [])
        out.append(row)
    return out


LOOSE = ValidationConfig(min_chosen_chars=1, min_rejected_chars=1, max_similarity=None)  # short test pairs pass


def write(tmp_path, data: list[dict]):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def trl_ids(dataset: Dataset, tokenizer) -> list[dict]:
    """TRL's own tokenization of `dataset` (its _prepare_dataset on a bare DPOTrainer)."""
    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer._tokenizer = tokenizer
    prepared = DPOTrainer._prepare_dataset(trainer, dataset, tokenizer, config(Path(tempfile.gettempdir()), max_length=4096), "t")
    return [{c: row[c] for c in TOKEN_COLUMNS} for row in prepared]


@pytest.mark.parametrize("kind", ["plain", "conversational", "multi-turn", "tools"])
def test_validation_keeps_exactly_trls_token_ids(tmp_path, kind):
    tokenizer = tiny_tokenizer()
    if kind == "tools":
        tokenizer.chat_template = ("{% if tools %}<tools>{{ tools | length }}</tools>{% endif %}"
                                   + tokenizer.chat_template)
    data = load_preference_data(str(write(tmp_path, rows(kind))), tokenizer=tokenizer, max_length=4096,
                                drop_prompt_too_long=True, keep_token_ids=True, config=LOOSE)
    ours = [{c: row[c] for c in TOKEN_COLUMNS} for row in data.dataset]
    assert len(ours) == 12
    assert ours == trl_ids(data.dataset.remove_columns(list(TOKEN_COLUMNS)), tokenizer)


def counting_tokenizer_calls(monkeypatch):
    import trl.trainer.dpo_trainer as dpo_module

    calls = []
    real = dpo_module._tokenize
    monkeypatch.setattr(dpo_module, "_tokenize", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_the_trainer_uses_the_ids_and_tokenizes_only_its_check_row(tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer()
    data = load_preference_data(str(write(tmp_path, rows("conversational"))), tokenizer=tokenizer, max_length=128,
                                drop_prompt_too_long=True, keep_token_ids=True, config=LOOSE)
    calls = counting_tokenizer_calls(monkeypatch)
    trainer = RecipeDPOTrainer(model=tiny_model(tokenizer), ref_model=tiny_model(tokenizer), args=config(tmp_path, max_steps=1),
                               processing_class=tokenizer, train_dataset=data.dataset)
    assert len(calls) == 3  # prompt, prompt + chosen, prompt + rejected of the first row: the check against TRL
    assert [trainer.train_dataset[i]["chosen_ids"] for i in range(12)] == data.dataset["chosen_ids"]
    trainer.train()


def test_ids_that_differ_from_trls_are_tokenized_again_with_one_warning(tmp_path, monkeypatch, caplog):
    tokenizer = tiny_tokenizer()
    data = load_preference_data(str(write(tmp_path, rows("conversational"))), tokenizer=tokenizer, max_length=128,
                                drop_prompt_too_long=True, keep_token_ids=True, config=LOOSE)
    stale = data.dataset.map(lambda row: {"chosen_ids": row["chosen_ids"][:-1]})  # e.g. another tokenizer's ids
    calls = counting_tokenizer_calls(monkeypatch)
    trainer = RecipeDPOTrainer(model=tiny_model(tokenizer), ref_model=tiny_model(tokenizer), args=config(tmp_path, max_steps=1),
                               processing_class=tokenizer, train_dataset=stale)
    assert len(calls) == 3 + 3 * 12
    assert [trainer.train_dataset[i]["chosen_ids"] for i in range(12)] == data.dataset["chosen_ids"]
    assert sum("differ from TRL's tokenization" in r.getMessage() for r in caplog.records) == 1


def test_pairs_whose_prompt_fills_max_length_are_dropped_as_trl_drops_them(tmp_path):
    tokenizer = tiny_tokenizer()
    data = load_preference_data(str(write(tmp_path, rows("conversational"))), tokenizer=tokenizer, max_length=4096,
                                keep_token_ids=True, config=LOOSE)  # kept here: the trainer's max_length below is smaller
    theirs = trl_ids(data.dataset.remove_columns(list(TOKEN_COLUMNS)), tokenizer)
    limit = len(theirs[10]["prompt_ids"])  # "Q10: ..." and "Q11: ..." are one token longer than "Q9: ..."
    trainer = RecipeDPOTrainer(model=tiny_model(tokenizer), ref_model=tiny_model(tokenizer), args=config(tmp_path, max_steps=1, max_length=limit),
                               processing_class=tokenizer, train_dataset=data.dataset)
    expected = [r["chosen_ids"] for r in theirs if len(r["prompt_ids"]) < limit]
    assert len(expected) == 10
    assert [trainer.train_dataset[i]["chosen_ids"] for i in range(len(trainer.train_dataset))] == expected


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["plain", "multi-turn"])
def test_the_embedded_models_bpe_tokenizer_gives_trls_ids_too(tmp_path, kind):
    """SmolLM2's BPE merges " Paris" across the prompt's end in plain text: the boundary moves as TRL moves it."""
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(None))
    data = load_preference_data(str(write(tmp_path, rows(kind))), tokenizer=tokenizer, max_length=4096,
                                drop_prompt_too_long=True, keep_token_ids=True, config=LOOSE)
    ours = [{c: row[c] for c in TOKEN_COLUMNS} for row in data.dataset]
    assert ours == trl_ids(data.dataset.remove_columns(list(TOKEN_COLUMNS)), tokenizer)


@pytest.fixture
def bars_on(monkeypatch):
    """Bars shown, whatever an in-process recipe run with --disable_tqdm true left behind; restored after."""
    from dpo_recipes import progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    shown = progress._ENABLED[0]
    progress.set_enabled(True)
    yield
    progress.set_enabled(shown)


def test_tokenizing_shows_progress_unless_disabled(tmp_path, capsys, monkeypatch, bars_on):
    from dpo_recipes import progress

    path = str(write(tmp_path, rows("conversational")))
    load_preference_data(path, tokenizer=tiny_tokenizer(), max_length=4096, keep_token_ids=True, config=LOOSE)
    assert "Tokenizing the pairs as TRL will: 100%" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    load_preference_data(path, tokenizer=tiny_tokenizer(), max_length=4096, keep_token_ids=True, config=LOOSE)
    assert "Tokenizing" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    progress.set_enabled(False)  # a recipe's --disable_tqdm true
    try:
        load_preference_data(path, tokenizer=tiny_tokenizer(), max_length=4096, keep_token_ids=True, config=LOOSE)
    finally:
        progress.set_enabled(True)
    assert "Tokenizing" not in capsys.readouterr().err


def test_answering_the_evaluation_prompts_shows_progress(capsys, bars_on):
    from dpo_recipes.watch.evaluation import generate_answers

    tokenizer = tiny_tokenizer()
    generate_answers(tiny_model(tokenizer), tokenizer, ["hi", "who are you?", "2+2?"], max_new_tokens=2, batch_size=2)
    assert "Answering the evaluation prompts: 100%" in capsys.readouterr().err
