"""Pair making on a tiny random Llama: correction with reference / teacher / rewrite, best-of-n skips, empty results,
resuming a killed run, settings that do not match a work file, read-back through the validators, and the recipe."""

from __future__ import annotations

import json

import pytest
from test_trainer import tiny_model, tiny_tokenizer

from dpo_recipes.data import load_preference_data
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.pairs import load_prompts, make_pairs, pairs_paths, save_pairs
from dpo_recipes.pairs.build import best_of_n_pair
from dpo_recipes.pairs.generate import generate, sample_seed
from dpo_recipes.pairs.prompts import as_prompt_rows

FAST = dict(max_new_tokens=6, batch_size=2, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def student():
    tok = tiny_tokenizer()
    return tiny_model(tok, seed=0), tok


@pytest.fixture(scope="module")
def teacher():
    tok = tiny_tokenizer()
    return tiny_model(tok, seed=1), tok


def prompts(n: int = 5) -> list[dict]:
    return [{"prompt": f"Question {i}: what is {i} + {i}?", "reference": f"R{2 * i}", "ok": i % 2 == 1}
            for i in range(n)]


def marked_ok(prompt, answer, row):
    """Passes the reference, and the student's answer where the row says 'ok' (the tiny model answers garbage)."""
    return answer == row["reference"] or (row["ok"] and not answer.startswith(("R", "Answer")))


# --- prompts file -------------------------------------------------------------------------------------------------
def test_load_prompts_reads_strings_messages_numbers_and_names_file_line_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "reference": 42}\n\n'
                    '{"prompt": [{"role": "user", "content": "b"}], "check": {"type": "one_word"}, "x": 1}\n')
    rows = load_prompts(str(path))
    assert [r.index for r in rows] == [0, 1] and rows[0].reference == "42" and rows[1].where.endswith("p.jsonl:3")
    assert rows[1].messages == [{"role": "user", "content": "b"}] and rows[1].data["x"] == 1
    for line, match in [('{"reference": "x"}', "p.jsonl:1: field 'prompt'"), ('{"prompt": ""}', "field 'prompt'"),
                        ('{"prompt": [{"role": "assistant", "content": "b"}]}', "ending with a user turn"),
                        ('{"prompt": "a", "reference": true}', "field 'reference' must be"),
                        ('{"prompt": "a", "check": "exact"}', "field 'check' must be an object"),
                        ('{"prompt": "a",', "p.jsonl:1: invalid JSON")]:
        path.write_text(line + "\n")
        with pytest.raises(DPORecipesError, match=match):
            load_prompts(str(path))
    path.write_text("\n")
    with pytest.raises(DPORecipesError, match="no prompts"):
        load_prompts(str(path))


# --- correction ---------------------------------------------------------------------------------------------------
def test_correction_with_reference_pairs_wrong_answers_and_counts_correct_ones(student):
    model, tok = student
    result = make_pairs(model, tok, prompts() + [{"prompt": "no reference", "ok": False}], verifier=marked_ok,
                        chosen_source="reference", **FAST)
    counts = result.counts
    assert counts["skipped"]["student_correct"] == 2 and counts["skipped"]["no_reference"] == 1
    assert counts["pairs"] + sum(counts["skipped"].values()) == counts["prompts"] == 6
    assert [r["chosen"][0]["content"] for r in result.rows] == ["R0", "R4", "R8"][:counts["pairs"]]
    assert all(r["score_chosen"] == 1.0 and r["score_rejected"] == 0.0 for r in result.rows)
    assert result.output_format == "conversational" and counts["pass_rate"] == pytest.approx(2 / 5)


def test_correction_with_rewrite_needs_the_rewrite_to_pass_the_check(student):
    model, tok = student
    result = make_pairs(model, tok, prompts(), verifier=marked_ok, chosen_source="rewrite",
                        rewrite_template="Answer: {reference}", **FAST)
    assert result.rows == [] and result.counts["skipped"]["chosen_fails_check"] == 3
    assert "3 chosen answers (reference or rewrite) failed the check" in result.why_empty()

    def rewrite_ok(prompt, answer, row):
        return answer.startswith("Answer: ") or row["ok"]

    result = make_pairs(model, tok, prompts(), verifier=rewrite_ok, chosen_source="rewrite",
                        rewrite_template="Answer: {reference}", **FAST)
    assert [r["chosen"][0]["content"] for r in result.rows] == ["Answer: R0", "Answer: R4", "Answer: R8"]
    with pytest.raises(DPORecipesError, match="only {reference} can be filled in"):
        make_pairs(model, tok, prompts(), verifier=rewrite_ok, chosen_source="rewrite", rewrite_template="{x}", **FAST)


def test_correction_with_teacher_keeps_only_teacher_answers_that_pass(student, teacher):
    model, tok = student
    rows = prompts(4)
    teacher_answers = dict(zip([r["prompt"] for r in rows],
                               generate(teacher[0], teacher[1], [r["prompt"] for r in rows], max_new_tokens=6)))
    rows[2]["teacher_bad"] = True

    def teacher_ok(prompt, answer, row):  # the teacher's own answer passes, except where the row says it is bad
        return answer == teacher_answers[prompt] and not row.get("teacher_bad")

    result = make_pairs(model, tok, [{k: v for k, v in r.items() if k != "reference"} for r in rows],
                        verifier=teacher_ok, chosen_source="teacher", teacher_model=teacher[0],
                        teacher_tokenizer=teacher[1], **FAST)
    assert result.counts["skipped"]["teacher_fails_check"] == 1 and result.counts["skipped"]["no_reference"] == 0
    assert [r["chosen"][0]["content"] for r in result.rows] == [teacher_answers[rows[i]["prompt"]] for i in (0, 1, 3)]
    with pytest.raises(DPORecipesError, match="needs a teacher"):
        make_pairs(model, tok, rows, verifier=teacher_ok, chosen_source="teacher", **FAST)


# --- best-of-n ----------------------------------------------------------------------------------------------------
def record(answers, scores, passed=None):
    return {"answers": answers, "scores": scores, **({"passed": passed} if passed is not None else {})}


def test_best_of_n_pair_skips_ties_failures_margins_and_identical_texts():
    assert best_of_n_pair(record(["a", "b", "c"], [0.2, 0.9, 0.1]))[0]["chosen"] == "b"
    assert best_of_n_pair(record(["a", "b"], [0.0, 0.0], [False, False])) == (None, "all_failed")
    assert best_of_n_pair(record(["a", "b"], [1.0, 1.0], [True, True])) == (None, "all_passed")
    assert best_of_n_pair(record(["a", "b"], [0.3, 0.3])) == (None, "tie")
    assert best_of_n_pair(record(["a", "b"], [0.3, 0.5]), min_margin=0.5) == (None, "below_margin")
    assert best_of_n_pair(record(["a", "b"], [0.0, 0.5]), min_margin=0.5)[0]["chosen"] == "b"
    assert best_of_n_pair(record(["a", " a "], [0.1, 0.2])) == (None, "identical")
    assert best_of_n_pair(record(["a", "  ", ""], [0.1, 0.9, 0.0])) == (None, "too_few_answers")
    pair, _ = best_of_n_pair(record(["x", "y", "x", "z"], [1.0, 0.0, 1.0, 0.0]))
    assert (pair["chosen"], pair["rejected"], pair["score_chosen"], pair["score_rejected"]) == ("x", "y", 1.0, 0.0)
    pair, _ = best_of_n_pair(record(["x", "x", "w"], [1.0, 0.0, 0.0]))
    assert pair["rejected"] == "w"  # among equally low answers, a text other than the chosen one


def length_score(prompt, answer, row):
    return float(len(answer))


def test_best_of_n_with_a_deterministic_scorer_keeps_highest_and_lowest(student):
    model, tok = student
    result = make_pairs(model, tok, prompts(4), mode="best-of-n", scorer=length_score, k=4, temperature=1.0,
                        seed=3, work_file=None, **FAST)
    counts = result.counts
    assert counts["pairs"] + sum(counts["skipped"].values()) == 4 and counts["pass_rate"] is None
    for r in result.rows:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert r["score_chosen"] == len(chosen) > r["score_rejected"] == len(rejected)
    none = make_pairs(model, tok, prompts(4), mode="best-of-n", scorer=length_score, k=4, temperature=1.0, seed=3,
                      min_margin=1e9, **FAST)
    assert none.rows == [] and none.counts["skipped"]["below_margin"] == counts["pairs"]


def test_best_of_n_ties_and_all_failing_answers_make_no_pair(student):
    model, tok = student
    tie = make_pairs(model, tok, prompts(3), mode="best-of-n", scorer=lambda p, a, r: 0.5, k=3, temperature=1.0,
                     **FAST)
    assert tie.counts["skipped"]["tie"] == 3
    assert tie.why_empty().startswith("all 3 prompts had all answers scored the same")
    failing = make_pairs(model, tok, prompts(3), mode="best-of-n", verifier={"type": "regex", "pattern": "ZZZ+"},
                         k=3, temperature=1.0, **FAST)
    assert failing.counts["skipped"]["all_failed"] == 3 and failing.counts["pass_rate"] == 0.0
    assert "all 3 prompts had every answer failing the check" in failing.why_empty()


# --- resuming -----------------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


def kill_after(batches: int):
    def on_batch(done_batches, done_prompts):
        if done_batches >= batches:
            raise Killed
    return on_batch


def work_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


BEST = dict(mode="best-of-n", scorer=length_score, k=3, temperature=1.0, top_p=0.9, seed=7, **FAST)


def test_a_killed_run_resumes_to_the_rows_of_an_uninterrupted_one_without_duplicates(student, tmp_path):
    model, tok = student
    whole = make_pairs(model, tok, prompts(7), work_file=tmp_path / "whole.work.jsonl", **BEST)
    work = tmp_path / "killed.work.jsonl"
    with pytest.raises(Killed):
        make_pairs(model, tok, prompts(7), work_file=work, on_batch=kill_after(1), **BEST)
    assert len(work_lines(work)) == 2  # the header and the first batch
    with pytest.raises(Killed):  # the rerun is killed too, after batch 3; then a kill mid-write leaves a torn line
        make_pairs(model, tok, prompts(7), work_file=work, on_batch=kill_after(3), **BEST)
    with open(work, "a") as f:
        f.write('{"batch": [{"i": 6, "h": "tor')
    resumed = make_pairs(model, tok, prompts(7), work_file=work, **BEST)
    assert resumed.rows == whole.rows and resumed.counts == whole.counts
    indices = [r["i"] for line in work_lines(work)[1:] for r in line["batch"]]
    assert sorted(indices) == list(range(7))
    assert work_lines(work)[1:] == work_lines(tmp_path / "whole.work.jsonl")[1:]


def test_a_second_run_on_a_work_file_in_use_is_refused_and_a_torn_header_starts_afresh(tmp_path):
    from dpo_recipes.pairs.workfile import WorkFile

    path, header = tmp_path / "w.work.jsonl", {"mode": "best-of-n"}
    with WorkFile(path, header):
        with pytest.raises(DPORecipesError, match="another run is writing this work file now"):
            WorkFile(path, header)
    path.write_text('{"header": {"mo')  # killed while writing the header
    with WorkFile(path, header) as work:
        work.append([{"i": 0, "h": "x"}])
    assert work_lines(path) == [{"header": {"version": 1, "mode": "best-of-n"}}, {"batch": [{"i": 0, "h": "x"}]}]


def test_sampling_is_seeded_per_prompt_index_and_sample_not_by_batch_neighbours(student, tmp_path):
    model, tok = student
    make_pairs(model, tok, prompts(4), work_file=tmp_path / "a.work.jsonl", **BEST)
    record = {r["i"]: r for line in work_lines(tmp_path / "a.work.jsonl")[1:] for r in line["batch"]}[2]
    row = as_prompt_rows(prompts(4))[2]  # batched with prompt 3 in the run; alone here (same length: no padding)
    alone = generate(model, tok, [row.prompt] * 3, seeds=[sample_seed(7, 2, j) for j in range(3)], temperature=1.0,
                     top_p=0.9, max_new_tokens=6)
    assert record["answers"] == alone and len(set(alone)) > 1
    make_pairs(model, tok, prompts(4), work_file=tmp_path / "b.work.jsonl", **{**BEST, "seed": 8})
    other = {r["i"]: r for line in work_lines(tmp_path / "b.work.jsonl")[1:] for r in line["batch"]}[2]
    assert other["answers"] != record["answers"]


def test_other_settings_an_edited_prompt_or_other_weights_are_refused(student, tmp_path):
    model, tok = student
    work = tmp_path / "w.work.jsonl"
    make_pairs(model, tok, prompts(3), work_file=work, **BEST)
    with pytest.raises(DPORecipesError, match=r"other settings \(seed: 7 -> 8\).*--overwrite"):
        make_pairs(model, tok, prompts(3), work_file=work, **{**BEST, "seed": 8})
    with pytest.raises(DPORecipesError, match=r"k: 3 -> 4"):
        make_pairs(model, tok, prompts(3), work_file=work, **{**BEST, "k": 4})
    edited = prompts(3)
    edited[1]["prompt"] = "changed"
    with pytest.raises(DPORecipesError, match=r"another version of the prompt at prompts\[1\]"):
        make_pairs(model, tok, edited, work_file=work, **BEST)
    other = tiny_model(tok, seed=5)
    with pytest.raises(DPORecipesError, match="model_fingerprint"):
        make_pairs(other, tok, prompts(3), work_file=work, **BEST)
    fresh = make_pairs(model, tok, prompts(3), work_file=work, overwrite=True, **{**BEST, "seed": 8})
    assert fresh.settings["seed"] == 8
    assert work_lines(work)[0]["header"]["seed"] == 8


# --- output -------------------------------------------------------------------------------------------------------
def test_saved_pairs_read_back_through_the_validators_with_report_and_summary(student, tmp_path):
    model, tok = student
    result = make_pairs(model, tok, prompts(), verifier=marked_ok, **FAST)
    summary, report = save_pairs(result, tmp_path / "out" / "pairs.jsonl")
    paths = pairs_paths(tmp_path / "out" / "pairs.jsonl")
    data = load_preference_data(str(paths.out), validation="off")
    assert len(data.dataset) == 3 and data.report.format == "conversational" and data.report.scored
    saved = json.loads(paths.summary.read_text())
    assert saved["counts"]["skipped"]["student_correct"] == 2 and saved["validation"]["kept"] == 3
    assert json.loads(paths.report.read_text())["kept"] == report.kept == 3
    assert saved["validation"]["training_defaults_would_drop"] == {"too_short": 3}

    plain_tok = tiny_tokenizer()
    plain_tok.chat_template = None
    plain = make_pairs(model, plain_tok, prompts(), verifier=marked_ok, **FAST)
    save_pairs(plain, tmp_path / "plain.jsonl")
    first = json.loads((tmp_path / "plain.jsonl").read_text().splitlines()[0])
    assert plain.output_format == "plain"
    assert (first["prompt"], first["chosen"]) == ("Question 0: what is 0 + 0?", "R0")


def test_an_empty_result_says_why_in_one_line_and_writes_no_pairs(student, tmp_path):
    model, tok = student
    result = make_pairs(model, tok, prompts(4), verifier=lambda p, a, r: True, **FAST)
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(DPORecipesError, match=r"^all 4 answers were correct: no pair to make \(harder prompts"):
        save_pairs(result, out)
    assert not out.exists() and not list(tmp_path.glob(".pairs.jsonl.*"))
    assert json.loads(pairs_paths(out).summary.read_text())["error"].startswith("all 4 answers were correct")


# --- the recipe ---------------------------------------------------------------------------------------------------
def test_recipe_makes_pairs_resumes_and_refuses_in_one_line(tiny_model_dir, tmp_path, capsys):
    from conftest import load_recipe

    from dpo_recipes import run
    from dpo_recipes.pairs.config import parse_pairs_args

    recipe = load_recipe("make_pairs")
    prompts_file = tmp_path / "p.jsonl"
    prompts_file.write_text("".join(json.dumps(r) + "\n" for r in prompts(4)))
    (tmp_path / "checks.py").write_text("def ok(prompt, answer, row):\n    return answer == row['reference']\n")
    out = tmp_path / "out" / "pairs.jsonl"
    argv = ["--prompts_file", str(prompts_file), "--output_file", str(out), "--model_name_or_path", tiny_model_dir,
            "--verifier", f"{tmp_path / 'checks.py'}:ok", "--max_new_tokens", "5", "--batch_size", "2",
            "--progress", "false"]
    summary = recipe.main(parse_pairs_args(argv=argv))
    assert summary["counts"]["pairs"] == 4 and out.exists()
    assert "4 pairs from 4 prompts (correction, conversational format)" in capsys.readouterr().out
    again = recipe.main(parse_pairs_args(argv=argv))  # the work file holds every answer: nothing is generated
    assert again["timing"].get("sequences") is None and out.read_text().count("\n") == 4

    def fails(*extra):
        with pytest.raises(SystemExit) as exc, run.recipe_errors():
            recipe.main(parse_pairs_args(argv=argv + list(extra)))
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading bars: one line
        assert exc.value.code == 2 and err.startswith("error: ")
        return err

    assert "other settings (max_new_tokens: 5 -> 6)" in fails("--max_new_tokens", "6")
    pairs_paths(out).work.unlink()
    assert "exists and no work file" in fails()
    assert "invalid choice: 'best_of_n'" in fails("--mode", "best_of_n")
    (tmp_path / "checks.py").write_text("def ok(prompt, answer, row):\n    return True\n")
    err = fails("--overwrite", "true", "--verifier", f"{tmp_path / 'checks.py'}:ok")
    assert err.startswith("error: all 4 answers were correct: no pair to make") and not out.exists()


def test_the_default_config_applies_only_without_a_prompts_file_in_any_spelling():
    from conftest import ROOT

    from dpo_recipes.pairs.config import parse_pairs_args

    default = ROOT / "recipes" / "configs" / "make_pairs.yaml"
    assert parse_pairs_args(default, argv=[]).verifier == "numeric"
    own = parse_pairs_args(default, argv=["--prompts-file", "p.jsonl", "--output_file=o.jsonl"])
    assert (own.prompts_file, own.output_file, own.verifier, own.rewrite_template) == ("p.jsonl", "o.jsonl", "exact",
                                                                                        None)
    with pytest.raises(DPORecipesError, match="Pass --prompts_file"):
        parse_pairs_args(None, argv=["--prompts_file", "p.jsonl"])
