"""Token counts for the length rules, the truncation count and the length-bias audit.

Counts are what DPOTrainer will see, up to a few template tokens: conversational prompts are rendered with
the tokenizer's chat template (with the generation prompt) when it has one; completions count their content
plus one end-of-sequence token.
"""

from __future__ import annotations

import json
import re

_BATCH = 2048


def require_chat_template(tokenizer, model_name: str | None = None) -> None:
    """Conversational data needs the tokenizer's chat template (TRL renders messages with it): say so in one line."""
    from dpo_recipes.errors import DPORecipesError

    if not getattr(tokenizer, "chat_template", None):
        name = model_name or getattr(tokenizer, "name_or_path", "") or "this model"
        raise DPORecipesError(
            f"The data is conversational (lists of messages), but the tokenizer of {name} has no chat template (a "
            "base model?), and TRL renders messages with it. Use the model's instruct version, add a "
            "chat_template.jinja to a local copy of the model folder, or give plain prompt/chosen/rejected strings.")


def count_tokens(texts: list, tokenizer) -> list[int]:
    """Tokens per text (no special tokens); None counts 0. Batched for fast tokenizers."""
    out: list[int] = []
    for start in range(0, len(texts), _BATCH):
        chunk = [t or "" for t in texts[start:start + _BATCH]]
        out.extend(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return out


def prompt_token_counts(prompts: list, tokenizer) -> list[int]:
    """Tokens per prompt; message lists go through the chat template when the tokenizer has one."""
    if not any(isinstance(p, list) for p in prompts):
        return count_tokens(prompts, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if p else ""
                    for p in prompts]
    else:
        rendered = ["\n".join(m["content"] for m in p) if p else "" for p in prompts]
    return count_tokens(rendered, tokenizer)


def completion_token_counts(texts: list, tokenizer) -> list[int]:
    """Tokens per completion text, plus the end-of-sequence token DPOTrainer appends."""
    return [n + 1 for n in count_tokens(texts, tokenizer)]


def trainer_prompt_lengths(prompts: list, chosen: list, rejected: list, tokenizer,
                           tools: list | None = None) -> list[int]:
    """Prompt tokens per pair exactly as TRL 1.16's DPOTrainer counts them (see `trainer_prompt_spans`)."""
    return [trained for trained, _ in trainer_prompt_spans(prompts, chosen, rejected, tokenizer, tools)]


def trainer_prompt_spans(prompts: list, chosen: list, rejected: list, tokenizer,
                         tools: list | None = None) -> list[tuple[int, int]]:
    """(prompt tokens as TRL 1.16's DPOTrainer takes them, tokens of the prompt tokenized alone) per pair.

    The two differ when the prompt's tokens alone are not a prefix of prompt + answer tokens: the answer's first
    token merges with the prompt's end ("Answer: " + "42"), or the template renders the prompt differently alone.
    See `trl_token_ids`, which this reads."""
    table = trl_token_ids(prompts, chosen, rejected, tokenizer, tools, desc=None)
    return list(zip((len(ids) for ids in table.column("prompt_ids").to_pylist()),
                    table.column("prompt_alone").to_pylist()))


TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # TRL 1.16 DPOTrainer's tokenized columns


def trl_token_ids(prompts: list, chosen: list, rejected: list, tokenizer, tools: list | None = None,
                  desc: str | None = "Tokenizing the pairs as TRL will"):
    """Per pair, the token ids TRL 1.16's DPOTrainer (`_prepare_dataset`) makes, as a pyarrow Table: `prompt_ids`,
    `chosen_ids`, `rejected_ids` (list<int32>), and `prompt_alone` (tokens of the prompt tokenized alone).

    What TRL does, row by row: append EOS to plain completions, tokenize prompt, prompt + chosen and prompt +
    rejected (plain text with the tokenizer's special tokens, conversations through the chat template with the
    row's tools, the prompt with the generation prompt), take the prompt to end where those token lists first
    diverge, and the completions to be the rest. Done here with TRL's own calls in batches (`apply_chat_template`
    takes a batch of conversations and tokenizes them in one fast-tokenizer call), which gives the same ids several
    times faster; the trainer checks its first row against TRL's own function before using them
    (`dpo_recipes.train.pretokenized`). `desc`: the progress bar's label (None: no bar).
    """
    import pyarrow as pa

    from dpo_recipes.progress import bar

    if any(isinstance(p, list) for p in prompts):
        require_chat_template(tokenizer)
    eos = tokenizer.eos_token or ""
    columns: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "prompt_alone": []}
    ids_type = pa.list_(pa.int32())
    progress = bar(len(prompts), desc) if desc and prompts else None
    for start in range(0, len(prompts), _BATCH):
        rows = range(start, min(len(prompts), start + _BATCH))
        p_ids, c_ids, r_ids = {}, {}, {}
        plain = [i for i in rows if not isinstance(prompts[i], list)]
        if plain:
            ps = [prompts[i] or "" for i in plain]
            for out, texts in ((p_ids, ps), (c_ids, [p + _with_eos(chosen[i] or "", eos) for p, i in zip(ps, plain)]),
                               (r_ids, [p + _with_eos(rejected[i] or "", eos) for p, i in zip(ps, plain)])):
                out.update(zip(plain, tokenizer(texts)["input_ids"]))
        groups: dict[str, list[int]] = {}  # conversations by their tools: one template call per group
        for i in rows:
            if isinstance(prompts[i], list):
                groups.setdefault(json.dumps(tools[i] if tools else None, sort_keys=True), []).append(i)
        for members in groups.values():
            kwargs = template_kwargs(tools[members[0]] if tools else None)
            for out, convs, generation in ((p_ids, [prompts[i] for i in members], True),
                                           (c_ids, [prompts[i] + (chosen[i] or []) for i in members], False),
                                           (r_ids, [prompts[i] + (rejected[i] or []) for i in members], False)):
                ids = tokenizer.apply_chat_template(convs, tokenize=True, return_dict=True,
                                                    add_generation_prompt=generation, **kwargs)["input_ids"]
                out.update(zip(members, ids))
        batch: dict[str, list] = {name: [] for name in TOKEN_COLUMNS}
        for i in rows:
            p, c, r = p_ids[i], c_ids[i], r_ids[i]
            cut = min(_prefix(p, c), _prefix(p, r))
            batch["prompt_ids"].append(p[:cut])
            batch["chosen_ids"].append(c[cut:])
            batch["rejected_ids"].append(r[cut:])
            columns["prompt_alone"].append(len(p))
        for name in TOKEN_COLUMNS:  # arrow int32 lists: ~4 bytes a token instead of a Python int's ~36
            columns[name].append(pa.array(batch[name], ids_type))
        if progress is not None:
            progress.update(len(rows))
    if progress is not None:
        progress.close()
    table = {name: pa.concat_arrays(columns[name]) if columns[name] else pa.array([], ids_type)
             for name in TOKEN_COLUMNS}
    return pa.table({**table, "prompt_alone": pa.array(columns["prompt_alone"], pa.int32())})


def _prefix(ids: list[int], other: list[int]) -> int:
    """TRL's common_prefix_length, with the usual case (`ids` is a prefix of `other`) compared in one C call."""
    if other[:len(ids)] == ids:
        return len(ids)
    from trl.data_utils import common_prefix_length

    return common_prefix_length(ids, other)


def template_kwargs(tools) -> dict:
    """The chat-template arguments TRL's DPOTrainer passes for a row: its tools, a JSON string or a list."""
    return {"tools": json.loads(tools) if isinstance(tools, str) else tools}


def _with_eos(text: str, eos: str) -> str:
    return text if not eos or text.endswith(eos) else text + eos


# Han, kana, Hangul and their compatibility/extension blocks: scripts written without spaces, a character a word.
CJK_RANGES = r"\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003ffff"  # a char class body
_CJK = re.compile(f"[{CJK_RANGES}]")
# A CJK character counts as this many characters in the length rules (min_chosen_chars, ...). Calibrated on
# LLaMA-Factory's parallel demos (300 pairs each): the 50/20 minimums drop 28 English pairs; counted as plain
# characters they drop 53 Chinese ones, weighted x2 33, x3 24 (x4 24). English runs ~4.8 characters a token, Chinese
# ~0.7: the same content is about 3x shorter in characters.
CJK_CHAR_WEIGHT = 3
_WORD = re.compile(r"\S+")


def char_length(text: str) -> int:
    """Length for the character minimums: characters of the stripped text, a CJK character counting 3."""
    text = text.strip()
    return len(text) + (CJK_CHAR_WEIGHT - 1) * len(_CJK.findall(text))


def word_count(text: str) -> int:
    """Words for the audit without a tokenizer: whitespace-separated words, each CJK character one word."""
    if not _CJK.search(text):
        return len(text.split())
    return len(_WORD.findall(_CJK.sub(" ", text))) + len(_CJK.findall(text))
