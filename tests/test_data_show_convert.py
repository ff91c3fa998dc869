"""`dpo-recipes show` and `convert`: pairs printed as validated and exactly as TRL's DPOTrainer tokenizes them;
converted files that read back to the identical dataset, written atomically, never over data without --force."""

import gzip
import json
from pathlib import Path

import pytest

from dpo_recipes.cli import main
from dpo_recipes.data import ValidationConfig, load_preference_data
from dpo_recipes.data.export import visible

LONG = "This answer is long enough to pass the default minimum length of fifty characters."
SHORT_OK = "Because it reflects the ocean, obviously."
KINDS = ["jsonl", "jsonl.gz", "parquet"]


def _plain(i: int, **over) -> dict:
    row = {"prompt": f"Question {i}: why is the sky blue? ", "chosen": f"{LONG} ({i})", "rejected": f"{SHORT_OK} {i}",
           "score_chosen": 2.5 + i, "score_rejected": 1}
    return {**row, **over}


def _chat(i: int, ascii: bool = False) -> dict:
    """A multi-turn conversation; `ascii` for the tiny tokenizer, which has only printable ASCII characters."""
    please, e, u = ("Reponds, s'il te plait.", "e", "u") if ascii else ("Réponds, s'il te plaît.", "é", "ü")
    return {"prompt": [{"role": "system", "content": "Tu es gentil.\tVraiment."},
                       {"role": "user", "content": f"Pourquoi le ciel est-il bleu ? ({i})"},
                       {"role": "assistant", "content": "Bonne question."},
                       {"role": "user", "content": please}],
            "chosen": [{"role": "assistant", "content": f"{LONG} {e}{i}"}],
            "rejected": [{"role": "assistant", "content": f"{SHORT_OK} {u}{i}"}]}


def _write(path: Path, rows: list) -> str:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- convert ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_convert_round_trips_plain_pairs_with_scores(tmp_path, capsys, kind):
    src = _write(tmp_path / "in.jsonl", [_plain(0), _plain(1, chosen="too short"), "\n", _plain(2), _plain(0)])
    out = tmp_path / "sub" / f"out.{kind}"
    code, stdout, err = _run(capsys, "convert", src, out)
    assert code == 0 and err == ""
    assert "plain + scores, 4 rows" in stdout and "too_short" in stdout and "duplicate" in stdout
    assert f"wrote 2 pairs to {out}" in stdout
    before, after = load_preference_data(src), load_preference_data(str(out))
    assert after.dataset.to_list() == before.dataset.to_list() and after.dataset.features == before.dataset.features
    assert after.dataset["score_chosen"] == [2.5, 4.5] and after.dataset["score_rejected"] == [1.0, 1.0]
    assert after.report.kept == after.report.total_rows == 2
    assert _leftovers(out.parent) == []


@pytest.mark.parametrize("kind", KINDS)
def test_convert_round_trips_conversational_pairs(tmp_path, capsys, kind):
    src = _write(tmp_path / "in.jsonl", [_chat(0), _chat(1)])
    out = tmp_path / f"out.{kind}"
    code, _, err = _run(capsys, "convert", src, out)
    assert code == 0 and err == ""
    before, after = load_preference_data(src), load_preference_data(str(out))
    assert after.report.format == "conversational" and len(after.dataset) == 2
    assert after.dataset.to_list() == before.dataset.to_list() and after.dataset.features == before.dataset.features
    assert after.dataset[1]["prompt"][0] == {"role": "system", "content": "Tu es gentil.\tVraiment."}
    if kind == "jsonl":  # one object a line, non-ASCII as itself
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 2 and "Réponds" in lines[0] and "\\u00e9" not in lines[0]
        assert set(json.loads(lines[0])) == {"prompt", "chosen", "rejected"}
    if kind == "jsonl.gz":
        assert len(gzip.decompress(out.read_bytes()).decode("utf-8").splitlines()) == 2


def test_convert_keeps_warn_mode_rows_and_the_flags(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(0), _plain(1, chosen="short but fine")])
    out = tmp_path / "out.jsonl"
    code, stdout, _ = _run(capsys, "convert", src, out, "--min-chosen-chars", "5")
    assert code == 0 and "wrote 2 pairs" in stdout
    code, stdout, _ = _run(capsys, "convert", src, out, "--force", "--validation", "warn")
    assert code == 0 and "wrote 2 pairs" in stdout
    code, stdout, _ = _run(capsys, "convert", src, out, "--force")
    assert code == 0 and "wrote 1 pair to" in stdout and len(out.read_text().splitlines()) == 1


def test_convert_takes_the_data_and_thresholds_from_a_recipe(tmp_path, capsys, tiny_model_dir):
    src = _write(tmp_path / "in.jsonl", [_plain(0), _plain(1, chosen="tiny")])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset_name: {src}\nmin_chosen_chars: 1\nmodel_name_or_path: {tiny_model_dir}\n")
    out = tmp_path / "out.parquet"
    code, stdout, err = _run(capsys, "convert", "--config", recipe, out, "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "wrote 2 pairs" in stdout and "tokenizer: " in stdout  # the recipe's model measures, as in validate
    written = load_preference_data(str(out), config=ValidationConfig(min_chosen_chars=1)).dataset
    assert written["chosen"] == [f"{LONG} (0)", "tiny"]
    assert json.loads((tmp_path / "r.json").read_text())["kept"] == 2


def test_convert_refuses_to_overwrite_without_force(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(0)])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    code, stdout, err = _run(capsys, "convert", src, out)
    assert code == 2 and err == f"error: convert: {out} exists; pass --force to overwrite it.\n" and stdout == ""
    assert out.read_text() == "precious\n"
    code, _, _ = _run(capsys, "convert", src, out, "--force")
    assert code == 0 and json.loads(out.read_text())["chosen"] == f"{LONG} (0)"


@pytest.mark.parametrize("name, message", [
    ("out.csv", "cannot write .csv files; name the output .jsonl, .jsonl.gz or .parquet."),
    ("out", "cannot write (no extension) files"),
    ("in.jsonl", "is the source"),
])
def test_convert_refuses_a_bad_output_in_one_line(tmp_path, capsys, name, message):
    src = _write(tmp_path / "in.jsonl", [_plain(0)])
    code, stdout, err = _run(capsys, "convert", src, tmp_path / name, "--force")
    assert code == 2 and stdout == "" and message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    assert Path(src).read_text() == json.dumps(_plain(0)) + "\n"


def test_convert_refuses_a_missing_output(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(0)])
    code, _, err = _run(capsys, "convert", src)
    assert code == 2 and "give the data and the output file" in err


def test_convert_writes_nothing_for_bad_input(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(0), "{not json\n"])
    code, stdout, err = _run(capsys, "convert", src, tmp_path / "out.jsonl")
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists() and _leftovers(tmp_path) == []


def test_convert_writes_nothing_when_no_pair_is_kept(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(0, chosen="x")])
    code, stdout, _ = _run(capsys, "convert", src, tmp_path / "out.jsonl")
    assert code == 1 and "kept 0" in stdout and "nothing written" in stdout
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_convert_leaves_no_partial_file_when_writing_fails(tmp_path, monkeypatch, kind):
    import datasets

    import dpo_recipes.data.export as export

    def rows_then_fail(dataset):
        yield {"prompt": "half"}
        raise RuntimeError("disk full")

    def parquet_then_fail(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_rows", rows_then_fail)
    monkeypatch.setattr(datasets.Dataset, "to_parquet", parquet_then_fail)
    src = _write(tmp_path / "in.jsonl", [_plain(0)])
    out = tmp_path / f"out.{kind}"
    out.write_text("the old file\n")
    with pytest.raises(RuntimeError, match="disk full"):
        main(["convert", src, str(out), "--force"])
    assert out.read_text() == "the old file\n" and _leftovers(tmp_path) == []


# --- show ------------------------------------------------------------------------------------------------------------

def test_show_prints_the_pairs_with_roles_scores_and_limits(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(i) for i in range(5)])
    code, out, err = _run(capsys, "show", src, "-n", "2")
    assert code == 0 and err == ""
    assert "plain + scores, 5 of 5 rows kept (validation strict); pairs 1-2" in out
    assert out.count("=== pair ") == 2 and "=== pair 1 (source row 1) ===" in out
    assert "prompt: «Question 0: why is the sky blue? »" in out and "scores: chosen 2.5, rejected 1.0" in out
    assert "as the trainer sees it" not in out
    code, out, _ = _run(capsys, "show", src, "--offset", "3", "-n", "10")
    assert code == 0 and out.count("=== pair ") == 2 and "=== pair 4 (source row 4)" in out and "pairs 4-5" in out

    chat = _write(tmp_path / "chat.jsonl", [_chat(0)])
    code, out, _ = _run(capsys, "show", chat)
    assert code == 0 and out.count("=== pair ") == 1
    assert "  system: «Tu es gentil.\\tVraiment.»\n  user: «Pourquoi le ciel est-il bleu ? (0)»" in out
    assert "chosen:\n  assistant: «" + LONG + " é0»" in out


def test_show_says_when_numbers_are_not_source_rows(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [_plain(0, chosen="x"), _plain(1)])
    code, out, _ = _run(capsys, "show", src)
    assert code == 0 and "1 of 2 rows kept" in out and "=== pair 1 (kept pair 1) ===" in out
    assert "not by source row: validation dropped 1" in out and "Question 1" in out


def test_show_renders_exactly_what_trl_renders(tmp_path, capsys, tiny_model_dir):
    from trl.data_utils import _tokenize, maybe_apply_chat_template

    from dpo_recipes.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [_chat(0, ascii=True), _chat(1, ascii=True), _chat(2, ascii=True)]
    src = _write(tmp_path / "chat.jsonl", rows)
    code, out, err = _run(capsys, "show", src, "--tokenizer", tiny_model_dir, "-n", "2")
    assert code == 0, err
    assert out.count("--- as the trainer sees it") == 2 and "<|im_start|>system\\n\n" in out
    for example in load_preference_data(src).dataset.select(range(2)):
        expected = maybe_apply_chat_template(example, tokenizer)  # TRL's string rendering
        prompt_tokens = len(_tokenize(tokenizer, example["prompt"], add_generation_prompt=True)["input_ids"])
        assert expected["prompt"].count("<|im_start|>") == 5 and expected["prompt"].endswith("assistant\n")
        assert f"prompt ({prompt_tokens} tokens):\n«{visible(expected['prompt'])}»\n" in out
        assert f"«{visible(expected['chosen'])}»" in out and f"«{visible(expected['rejected'])}»" in out
    assert "(2)" not in out


def test_show_renders_plain_pairs_with_the_eos_the_trainer_appends(tmp_path, capsys, tiny_model_dir):
    src = _write(tmp_path / "in.jsonl", [_plain(0)])
    code, out, _ = _run(capsys, "show", src, "--tokenizer", tiny_model_dir, "--max-length", "60")
    prompt = "Question 0: why is the sky blue? "
    assert code == 0
    assert f"prompt ({len(prompt)} tokens):\n«{prompt}»" in out  # character-level tokenizer: a token a character
    assert f"chosen ({len(LONG) + 4 + 1} tokens):\n«{LONG} (0)<|im_end|>»" in out
    assert "> max_length 60: the trainer truncates this pair" in out


def test_show_points_at_a_prompt_the_trainer_cuts(tmp_path, capsys):
    from test_trainer import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # the assistant turn renders as "assistant " but the generation prompt "assistant\n"
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}{{ ' ' if m['role'] == 'assistant' "
                               "else '\n' }}{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer.save_pretrained(tmp_path / "tok")
    src = _write(tmp_path / "chat.jsonl", [_chat(0, ascii=True)])
    code, out, _ = _run(capsys, "show", src, "--tokenizer", tmp_path / "tok")
    assert code == 0
    assert "note: the prompt alone ends in «\\n\n», which the trainer leaves out" in out
    assert "«<|im_start|>system\\n" in out and f"« {LONG} e0<|im_end|>\\n\n»" in out


def test_show_exit_codes(tmp_path, capsys, tiny_base_model_dir):
    src = _write(tmp_path / "in.jsonl", [_plain(0, chosen="x")])
    code, out, _ = _run(capsys, "show", src)
    assert code == 1 and "kept 0" in out
    src = _write(tmp_path / "in.jsonl", [_plain(0), _plain(1)])
    code, out, err = _run(capsys, "show", src, "--offset", "2")
    assert code == 2 and err == "error: show: --offset 2 skips every pair: 2 are kept.\n"
    code, _, err = _run(capsys, "show", src, "-n", "0")
    assert code == 2 and "-n must be 1 or more" in err
    chat = _write(tmp_path / "chat.jsonl", [_chat(0)])
    code, _, err = _run(capsys, "show", chat, "--tokenizer", tiny_base_model_dir)
    assert code == 2 and "no chat template" in err and len(err.splitlines()) == 1
    code, _, err = _run(capsys, "show", tmp_path / "absent.jsonl")
    assert code == 2 and "no such file" in err


def test_show_leaves_unrenderable_warn_mode_pairs_unrendered(tmp_path, capsys, tiny_model_dir):
    src = _write(tmp_path / "in.jsonl", [_plain(0, chosen=None), _plain(1)])
    code, out, _ = _run(capsys, "show", src, "--validation", "warn", "--tokenizer", tiny_model_dir)
    assert code == 0 and "chosen: (missing)" in out and "not rendered" in out
    assert out.count("--- as the trainer sees it") == 1


def test_visible_shows_what_the_eye_misses():
    assert visible("a\nb\tc\u00a0d\u200be ") == "a\\n\nb\\tc\\xa0d\\u200be "
    assert visible("é 中") == "é 中"
