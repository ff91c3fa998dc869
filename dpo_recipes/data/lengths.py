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

    DPOTrainer (`_prepare_dataset`) appends EOS to plain completions, tokenizes prompt, prompt + chosen and prompt +
    rejected (plain text with the tokenizer's special tokens, conversations with the chat template), and takes the
    prompt to end where those token lists first diverge. It then drops every pair whose prompt is >= max_length
    tokens. TRL's own tokenizing functions are used here, so the count is the one TRL will apply.
    """
    from trl.data_utils import _tokenize, common_prefix_length

    if any(isinstance(p, list) for p in prompts):
        require_chat_template(tokenizer)
    eos = tokenizer.eos_token or ""
    plain = [i for i, p in enumerate(prompts) if not isinstance(p, list)]
    out = [(0, 0)] * len(prompts)
    for start in range(0, len(plain), _BATCH):
        idx = plain[start:start + _BATCH]
        ps = [prompts[i] or "" for i in idx]
        cs = [ps[k] + _with_eos(chosen[i] or "", eos) for k, i in enumerate(idx)]
        rs = [ps[k] + _with_eos(rejected[i] or "", eos) for k, i in enumerate(idx)]
        p_ids, c_ids, r_ids = (tokenizer(texts)["input_ids"] for texts in (ps, cs, rs))
        for k, i in enumerate(idx):
            out[i] = (min(common_prefix_length(p_ids[k], c_ids[k]), common_prefix_length(p_ids[k], r_ids[k])),
                      len(p_ids[k]))
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            kwargs = template_kwargs(tools[i] if tools else None)
            p_ids = _tokenize(tokenizer, p, add_generation_prompt=True, **kwargs)["input_ids"]
            c_ids = _tokenize(tokenizer, p + (chosen[i] or []), **kwargs)["input_ids"]
            r_ids = _tokenize(tokenizer, p + (rejected[i] or []), **kwargs)["input_ids"]
            out[i] = (min(common_prefix_length(p_ids, c_ids), common_prefix_length(p_ids, r_ids)), len(p_ids))
    return out


def template_kwargs(tools) -> dict:
    """The chat-template arguments TRL's DPOTrainer passes for a row: its tools, a JSON string or a list."""
    return {"tools": json.loads(tools) if isinstance(tools, str) else tools}


def _with_eos(text: str, eos: str) -> str:
    return text if not eos or text.endswith(eos) else text + eos


# Han, kana, Hangul and their compatibility/extension blocks: scripts written without spaces, a character a word.
_CJK = re.compile(r"[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003ffff]")
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
