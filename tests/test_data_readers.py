"""dpo_recipes.data.readers: every supported container reads to the same rows; structural damage is one clear error."""

import gzip
import json

import pytest

from dpo_recipes.data.readers import read_rows
from dpo_recipes.errors import DPORecipesError

ROWS = [
    {"prompt": "What is the boiling point of water at sea level?", "chosen": "100 degrees Celsius.", "rejected": "50."},
    {"prompt": "Name a prime number.", "chosen": "Seven is prime.", "rejected": "Nine.", "extra": 1},
]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _csv(rows) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["prompt", "chosen", "rejected"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _texts(raw):
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in raw.rows]


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz", "d.csv", "d.csv.gz",
                                  "d.parquet", "d.parquet.gz", "d.ndjson"])
def test_every_file_type_reads_the_same_rows(tmp_path, name):
    path = tmp_path / name
    kind = name.split(".")[1]
    if kind in ("jsonl", "ndjson"):
        data = _jsonl(ROWS).encode()
    elif kind == "json":
        data = json.dumps(ROWS).encode()
    elif kind == "csv":
        data = _csv(ROWS).encode()
    else:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS]), buf)
        data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    raw = read_rows(str(path))
    assert _texts(raw) == [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]


def test_json_file_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(_jsonl(ROWS))
    raw = read_rows(str(path))
    assert len(raw.rows) == 2 and raw.where(1) == "line 2"


def test_bom_crlf_and_trailing_blank_lines_are_not_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl(ROWS).replace("\n", "\r\n").encode() + b"\r\n\r\n  \n")
    raw = read_rows(str(path))
    assert _texts(raw)[0][0] == ROWS[0]["prompt"] and len(raw.rows) == 2
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + _csv(ROWS).encode() + b"\r\n\r\n")
    assert _texts(read_rows(str(csv_path))) == _texts(raw)


def test_jsonl_rows_are_named_by_physical_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    raw = read_rows(str(path))
    assert [raw.where(0), raw.where(1)] == ["line 2", "line 4"]


def test_csv_cells_holding_message_lists_become_lists(tmp_path):
    msgs = json.dumps([{"role": "user", "content": "hi, there"}])
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected\n"' + msgs.replace('"', '""') + '",a,b\n')
    assert read_rows(str(path)).rows[0]["prompt"] == [{"role": "user", "content": "hi, there"}]


def test_save_to_disk_folder_and_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS])
    ds.save_to_disk(str(tmp_path / "single"))
    assert _texts(read_rows(str(tmp_path / "single"))) == [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert len(read_rows(str(tmp_path / "dict"), split="test").rows) == 1
    with pytest.raises(DPORecipesError, match=r"no split 'dev'; available: train, test"):
        read_rows(str(tmp_path / "dict"), split="dev")


def test_hub_id_failure_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DPORecipesError, match=r"someone/pairs: not a local file .* hub dataset failed"):
        read_rows("someone/pairs")


def test_hub_id_is_loaded_with_the_split(monkeypatch):
    import datasets

    seen = {}

    def fake(name, split):
        seen.update(name=name, split=split)
        return datasets.Dataset.from_list(ROWS[:1])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    raw = read_rows("someone/pairs", split="train_prefs")
    assert seen == {"name": "someone/pairs", "split": "train_prefs"} and raw.kind == "hub"


def test_missing_local_looking_path_is_not_sent_to_the_hub():
    with pytest.raises(DPORecipesError, match=r"no_such\.jsonl: no such file"):
        read_rows("data/no_such.jsonl")


# --- silent wrongs from real files (issue "Data from the wild") ---------------------------------------------------
def test_csv_written_by_datasets_to_csv_reads_message_reprs_as_messages(tmp_path):
    """Dataset.to_csv / DataFrame.to_csv write message lists as Python reprs: read them as messages, not as text."""
    import datasets

    from dpo_recipes.data import load_preference_data

    answer = "It's {}, because adding {} to itself doubles it, as any sum x + x = 2x."
    rows = [{"prompt": f"What is {i} + {i}?",
             "chosen": [{"content": f"What is {i} + {i}?", "role": "user"},
                        {"content": answer.format(2 * i, i), "role": "assistant"}],
             "rejected": [{"content": f"What is {i} + {i}?", "role": "user"},
                          {"content": f"It is {2 * i + 1}; I counted on my fingers twice.", "role": "assistant"}]}
            for i in range(4)]
    path = tmp_path / "ultrafeedback.csv"
    datasets.Dataset.from_list(rows).to_csv(str(path))
    assert "[{'content'" in path.read_text()  # the repr, not JSON
    data = load_preference_data(str(path), min_rows=0)
    assert data.report.format == "implicit_prompt" and data.report.kept == 4
    row = data.dataset[2]
    assert row["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert row["chosen"] == [{"role": "assistant", "content": answer.format(4, 2)}]


def test_a_csv_message_cell_that_is_no_literal_is_refused_in_one_line(tmp_path):
    from dpo_recipes.data import load_preference_data

    path = tmp_path / "pandas.csv"
    path.write_text('prompt,chosen,rejected\nhi,"[{\'content\': array([\'x\'], dtype=object), \'role\': \'user\'}]",'
                    '"a plain rejected answer that is long enough"\n')
    with pytest.raises(DPORecipesError, match=r"pandas\.csv: row 1 \(line 2\): field 'chosen': looks like a list of "
                                              r"messages") as err:
        load_preference_data(str(path))
    assert "\n" not in str(err.value)


def test_implicit_prompt_never_invents_a_prompt_when_the_real_one_is_in_another_column(tmp_path):
    from dpo_recipes.data import load_preference_data

    path = tmp_path / "sharegpt.jsonl"
    row = {"conversations": [{"from": "human", "value": "气候变化的主要原因是什么？"}],
           "chosen": "气候变化是由温室气体排放增加引起的，主要来自化石燃料的燃烧。",
           "rejected": "气候变化是自然现象，与人类活动无关。"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n")
    with pytest.raises(DPORecipesError, match=r"column 'conversations' holds the real one"):
        load_preference_data(str(path), data_format="implicit_prompt")
    # read natively now (the old advice, --format implicit_prompt, led to the invented prompt "气候变化是")
    data = load_preference_data(str(path))
    assert data.dataset[0]["prompt"] == [{"role": "user", "content": "气候变化的主要原因是什么？"}]
    assert data.dataset[0]["chosen"][0]["content"].startswith("气候变化是由")
    assert data.report.format == "sharegpt"
