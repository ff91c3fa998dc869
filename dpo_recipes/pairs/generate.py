"""Batched answers: greedy, or sampled with a seed per (prompt index, sample) that no other row's draws touch.

Sampling uses the Gumbel-max trick inside a greedy `generate`: each step adds Gumbel noise drawn from the row's own
`torch.Generator` to its temperature-scaled, top-p-filtered logits and takes the argmax, which is an exact draw from
the same distribution as `do_sample=True`. Transformers' sampler draws every row from one global generator, so a
row's sample would depend on which rows share its batch; here it depends only on the seed, the prompt index and the
sample number. (Rows of one batch are still computed together: a different batch_size or padding can move logits by
float rounding, which is why the work file records batch_size.)
"""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.watch.evaluation import render_prompt


def sample_seed(seed: int, index: int, sample: int) -> int:
    """The seed of sample `sample` of prompt `index` under the run seed `seed` (a 63-bit integer)."""
    digest = hashlib.sha256(f"{seed}/{index}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def render(tokenizer, prompt, where: str = "") -> str:
    """The text the model continues: the chat template with the generation prompt (a string prompt goes through
    `dpo_recipes.watch.evaluation.render_prompt`, as the project's other generation does); no template: the text as is."""
    if isinstance(prompt, str):
        return render_prompt(tokenizer, prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if len(prompt) == 1:
        return prompt[0]["content"]
    raise DPORecipesError(f"{where}: a prompt of {len(prompt)} messages needs a chat template, and this tokenizer has "
                          "none; give a single user turn or use a model with a chat template.")


class SeededSampler(LogitsProcessor):
    """Temperature, top-p, then Gumbel noise from one generator per row: argmax of the result is a seeded sample."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > self.top_p  # the mass before this token already exceeds top_p
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])
        return scores - torch.log(-torch.log(uniform))


def generate(model, tokenizer, prompts: list, *, max_new_tokens: int, seeds: list[int] | None = None,
             temperature: float = 1.0, top_p: float = 1.0, wheres: list[str] | None = None,
             stats: dict | None = None) -> list[str]:
    """One answer per prompt (a string or messages), decoded without special tokens and stripped.

    `seeds` (one per prompt): sample with `temperature` and `top_p`; None: greedy. Prompts are left-padded and run as
    one batch. `stats`, when given, accumulates 'sequences' and 'new_tokens' (tokens generated before the end).
    """
    wheres = wheres or [""] * len(prompts)
    texts = [render(tokenizer, p, w) for p, w in zip(prompts, wheres)]
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    processors = LogitsProcessorList([SeededSampler(seeds, temperature, top_p)] if seeds is not None else [])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, logits_processor=processors, pad_token_id=tokenizer.pad_token_id)
    finally:
        if was_training:
            model.train()
    new = out[:, enc["input_ids"].shape[1]:]
    if stats is not None:
        stats["sequences"] = stats.get("sequences", 0) + len(prompts)
        stats["new_tokens"] = stats.get("new_tokens", 0) + int((new != tokenizer.pad_token_id).sum())
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
