"""Look at and write out preference data as the run will use it: the `show` and `convert` commands.

`show` prints normalized, validated pairs and, with a tokenizer, the exact text TRL's DPOTrainer trains on, so a
doubled system prompt or a missing space at the prompt/answer boundary is visible before a run. `convert` writes the
pairs to a JSON Lines or Parquet file that `load_preference_data` reads back to the identical dataset.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from pathlib import Path
from types import SimpleNamespace

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import write_file_atomic

# File endings `convert` writes (longest first: 'x.jsonl.gz' must not be taken for something else).
OUTPUT_KINDS = {".jsonl.gz": "jsonl.gz", ".jsonl": "jsonl", ".parquet": "parquet"}
# Legend printed above rendered text: « and » fence each text and are not part of it.
LEGEND = "« » fence the exact text (not part of it); \\n marks a newline, other invisible characters are escaped"


# --- show ------------------------------------------------------------------------------------------------------------

def visible(text: str) -> str:
    """`text` with what the eye misses made visible: a newline as \\n (then a real line break), tabs, carriage returns,
    no-break and zero-width spaces and other non-printing characters as Python escapes; spaces stay spaces."""
    return "".join("\\n\n" if ch == "\n" else ch if ch == " " or ch.isprintable() else repr(ch)[1:-1]
                   for ch in text)


def _fenced(text) -> str:
    return "(missing)" if text is None else f"«{visible(text)}»"


def _field(name: str, value) -> list[str]:
    """A prompt/chosen/rejected value: the string, or one line per message with its role."""
    if not isinstance(value, list):
        return [f"{name}: {_fenced(value)}"]
    return [f"{name}:", *(f"  {m['role']}: {_fenced(m['content'])}" for m in value)] if value else [f"{name}: []"]


@contextlib.contextmanager
def _no_progress_bars():
    """datasets draws a progress bar per map; `show` prints only the pairs."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _renderable(example: dict) -> bool:
    """warn/off keep pairs with a missing or empty field; the trainer cannot tokenize them, and neither can we."""
    return all(example[k] is not None and example[k] != [] for k in ("prompt", "chosen", "rejected"))


def trainer_view(dataset, tokenizer) -> list[dict | None]:
    """Per pair: prompt / chosen / rejected token ids as TRL 1.16's DPOTrainer builds them, their text, and the tail of
    the prompt the trainer leaves out; None for a pair it cannot tokenize (a missing field kept by warn/off).

    Runs TRL's own `DPOTrainer._prepare_dataset` (EOS appended to plain answers, the chat template for messages and
    tools, the answer starting where prompt and prompt + answer tokens first diverge), so what `show` prints cannot
    drift from what trains. The method reads only the tokenizer from the trainer, so no model is loaded.
    """
    from trl import DPOTrainer

    from dpo_recipes.data.lengths import require_chat_template

    keep = [i for i, example in enumerate(dataset) if _renderable(example)]
    out: list[dict | None] = [None] * len(dataset)
    if not keep:
        return out
    if isinstance(dataset[keep[0]]["prompt"], list):
        require_chat_template(tokenizer)
    trainer = SimpleNamespace(_tokenizer=tokenizer)
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")  # no drop: shown
    with _no_progress_bars():
        prepared = DPOTrainer._prepare_dataset(trainer, dataset.select(keep), tokenizer, args, "show")
    for i, row in zip(keep, prepared):
        prompt_ids = row["prompt_ids"]
        out[i] = {"prompt_ids": prompt_ids, "chosen_ids": row["chosen_ids"], "rejected_ids": row["rejected_ids"],
                  "prompt": _decode(tokenizer, prompt_ids),
                  "chosen": _decode_after(tokenizer, prompt_ids, row["chosen_ids"]),
                  "rejected": _decode_after(tokenizer, prompt_ids, row["rejected_ids"]),
                  "prompt_cut": _decode(tokenizer, _prompt_alone(dataset[i], tokenizer)[len(prompt_ids):])}
    return out


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _decode_after(tokenizer, prompt_ids: list[int], ids: list[int]) -> str:
    """The answer's text as it follows the prompt: decoded alone, a SentencePiece answer can lose its leading space."""
    head, whole = _decode(tokenizer, prompt_ids), _decode(tokenizer, prompt_ids + ids)
    return whole[len(head):] if whole.startswith(head) else _decode(tokenizer, ids)


def _prompt_alone(example: dict, tokenizer) -> list[int]:
    """The prompt's tokens alone, as DPOTrainer tokenizes it before cutting it where prompt + answer diverge (TRL
    keeps only the cut prompt and warns once per process, so `show` says it per pair)."""
    from trl.data_utils import _tokenize

    from dpo_recipes.data.lengths import template_kwargs

    if not isinstance(example["prompt"], list):
        return _tokenize(tokenizer, example["prompt"])["input_ids"]
    return _tokenize(tokenizer, example["prompt"], add_generation_prompt=True,
                     **template_kwargs(example.get("tools")))["input_ids"]


def format_pair(number: int, example: dict, where: str, rendered: dict | None = None, tokenizer_name: str = "",
                max_length: int | None = None) -> str:
    """One pair: its fields as validated, then (with a tokenizer) the trainer's text and token counts."""
    lines = [f"=== pair {number} ({where}) ===", *_field("prompt", example["prompt"]),
             *_field("chosen", example["chosen"]), *_field("rejected", example["rejected"])]
    if "score_chosen" in example:
        lines.append(f"scores: chosen {example['score_chosen']!r}, rejected {example['score_rejected']!r}")
    if example.get("tools"):
        tools = example["tools"]
        lines.append(f"tools: {tools[:200]}" + (f"... ({len(tools):,} characters)" if len(tools) > 200 else ""))
    if tokenizer_name and rendered is None:
        lines.append("as the trainer sees it: not rendered (a field is missing; the trainer would fail on this pair)")
    elif rendered is not None:
        counts = {k: len(rendered[f"{k}_ids"]) for k in ("prompt", "chosen", "rejected")}
        lines.append(f"--- as the trainer sees it ({tokenizer_name}): prompt {counts['prompt']}, chosen "
                     f"{counts['chosen']}, rejected {counts['rejected']} tokens ---")
        for key in ("prompt", "chosen", "rejected"):
            lines += [f"{key} ({counts[key]} tokens):", _fenced(rendered[key])]
        if rendered["prompt_cut"]:
            lines.append(f"note: the prompt alone ends in {_fenced(rendered['prompt_cut'])}, which the trainer "
                         "leaves out: with the answer after it, those tokens merge or render differently, so it "
                         "trains on a context the model never answers from (end the prompt on a token boundary)")
        longest = counts["prompt"] + max(counts["chosen"], counts["rejected"])
        if max_length is not None and longest > max_length:
            lines.append(f"note: {longest} tokens > max_length {max_length}: the trainer truncates this pair")
    return "\n".join(lines)


def show_pairs(data, offset: int, n: int, tokenizer=None, max_length: int | None = None) -> str:
    """The header and pairs `offset` .. `offset + n - 1` (0-based, among the kept pairs) as `dpo-recipes show`
    prints them."""
    r = data.report
    end = min(offset + n, r.kept)
    dropped = r.total_rows - r.kept
    head = [f"{r.source}: {r.format}{' + scores' if r.scored else ''}, {r.kept:,} of {r.total_rows:,} rows kept "
            f"(validation {r.validation}); " + (f"pairs {offset + 1}-{end}" if end > offset + 1 else f"pair {end}")]
    if dropped:  # load_preference_data does not say which source row a kept pair came from
        head.append(f"  pairs are numbered among the kept ones, not by source row: validation dropped {dropped:,} "
                    "(dpo-recipes validate names them)")
    subset = data.dataset.select(range(offset, end))
    name = (getattr(tokenizer, "name_or_path", "") or "tokenizer") if tokenizer is not None else ""
    rendered = trainer_view(subset, tokenizer) if tokenizer is not None else [None] * len(subset)
    if tokenizer is not None:
        head.append(f"  {LEGEND}")
    blocks = []
    for k, example in enumerate(subset):
        number = offset + k + 1
        where = f"kept pair {number}" if dropped else f"source row {number}"
        blocks.append(format_pair(number, example, where, rendered[k], name, max_length))
    return "\n".join(head) + "\n\n" + "\n\n".join(blocks)


# --- convert ---------------------------------------------------------------------------------------------------------

def output_kind(out: str) -> str:
    """'jsonl', 'jsonl.gz' or 'parquet' from OUT's name; one line naming anything else."""
    name = Path(out).name.lower()
    for ending, kind in OUTPUT_KINDS.items():
        if name.endswith(ending):
            return kind
    suffix = "".join(Path(out).suffixes) or "(no extension)"
    raise DPORecipesError(f"convert: {out}: cannot write {suffix} files; name the output .jsonl, .jsonl.gz or "
                          ".parquet.")


def check_output(out: str, source: str, force: bool) -> str:
    """Refuse, before any data is read, an OUT that `convert` must not write; return its kind."""
    kind = output_kind(out)
    path, src = Path(out).expanduser(), Path(source).expanduser()
    if path.resolve() == src.resolve() or (path.exists() and src.exists() and os.path.samefile(path, src)):
        raise DPORecipesError(f"convert: {out} is the source; write the converted pairs to another file.")
    if path.is_dir():
        raise DPORecipesError(f"convert: {out} is a folder; give a file name ending .jsonl, .jsonl.gz or .parquet.")
    if path.exists() and not force:
        raise DPORecipesError(f"convert: {out} exists; pass --force to overwrite it.")
    return kind


def _rows(dataset):
    """The rows as dicts, a batch at a time (indexing a Dataset row by row is slow)."""
    for batch in dataset.iter(batch_size=1000):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def _write_jsonl(dataset, path: str, opener=open) -> None:
    with opener(path, "wt", encoding="utf-8") as f:
        for row in _rows(dataset):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_pairs(dataset, out: str, kind: str) -> Path:
    """Write every column of `dataset` (prompt, chosen, rejected, and scores / tools when present) to `out`.

    Atomic: written to a temporary file beside `out` and renamed into place, so `out` is complete or untouched,
    never half-written; the temporary file is removed on any error or interrupt.
    """
    path = Path(out).expanduser()
    write = {"jsonl": _write_jsonl, "jsonl.gz": lambda d, p: _write_jsonl(d, p, gzip.open),
             "parquet": lambda d, p: d.to_parquet(p)}[kind]

    def write_to(tmp: str) -> None:
        with _no_progress_bars():
            write(dataset, tmp)

    try:
        write_file_atomic(path, write_to)
    except OSError as exc:
        raise DPORecipesError(f"convert: cannot write {out} ({exc.strerror or exc}).") from None
    return path
