"""Token counts for the length rules, the truncation count and the length-bias audit.

Counts are what DPOTrainer will see, up to a few template tokens: conversational prompts are rendered with
the tokenizer's chat template (with the generation prompt) when it has one; completions count their content
plus one end-of-sequence token.
"""

from __future__ import annotations

_BATCH = 2048


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
