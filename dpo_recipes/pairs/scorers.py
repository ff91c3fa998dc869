"""Scores for best-of-n: a verifier, a sequence-classification reward model, or a user function.

    build_scorer("verifier", verifier)           # the verifier's score: 1/0 for built-in checks, a float for python
    build_scorer("path/to/reward-model")         # a local folder: AutoModelForSequenceClassification, 1 label
    build_scorer("my_rewards:score")             # function(prompt, answer, row) -> float ('file.py:function' too)

A reward model is loaded from safetensors only, with remote code off, and must have one output (num_labels=1: a
scalar reward; a classifier with more labels is refused rather than guessed at). It reads prompt + answer through
its tokenizer's chat template when it has one (the answer as the assistant turn), else as prompt, a newline, the
answer. Texts are right-padded in batches, so a text scores the same in any batch up to float rounding.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.models import load_tokenizer, missing_in_folder
from dpo_recipes.pairs.prompts import PromptRow
from dpo_recipes.pairs.rules import as_score, function_name, load_function
from dpo_recipes.pairs.verifiers import Verifier


def weights_fingerprint(model) -> str:
    """A hash of every parameter's name, shape and up to 4,096 evenly strided values (16 hex characters).

    Cheap for any size (no full pass over the weights) and exact: trained weights, a new LoRA adapter or another
    checkpoint give another fingerprint, so a work file made by one model is not resumed by another.
    """
    import torch

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.float32)
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


class Scorer:
    """`scorer(rows, answers)` -> (scores, passed or None): one float per answer, and pass/fail for verifiers."""

    def __init__(self, kind: str, describe: dict, score: Callable, can_score: Callable = lambda row: True):
        self.kind, self._describe, self._score, self.can_score = kind, describe, score, can_score

    def __call__(self, rows: list[PromptRow], answers: list[str]) -> tuple[list[float], list[bool] | None]:
        scores, passed = self._score(rows, answers)
        for row, value in zip(rows, scores):
            if not math.isfinite(value):
                raise DPORecipesError(f"{row.where}: the {self.kind} scorer returned {value} for an answer.")
        return scores, passed

    def describe(self) -> dict:
        return self._describe


def verifier_scorer(verifier: Verifier) -> Scorer:
    def score(rows, answers):
        verdicts = [verifier.verdict(row, answer) for row, answer in zip(rows, answers)]
        return [s for s, _ in verdicts], [p for _, p in verdicts]

    return Scorer("verifier", {"type": "verifier", "verifier": verifier.describe()}, score, verifier.can_check)


def function_scorer(fn: Callable, name: str) -> Scorer:
    def score(rows, answers):
        return [as_score(fn(row.prompt, answer, row.data), name, row.where) for row, answer in zip(rows, answers)], None

    return Scorer("function", {"type": "function", "function": name}, score)


def load_reward_model(path: str, dtype: str = "float32"):
    """A local sequence-classification reward model (safetensors, no remote code) and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = Path(path).expanduser()
    missing = missing_in_folder(folder, "model") if folder.is_dir() else f"{folder} is not a folder"
    if missing:
        raise DPORecipesError(f"reward model {path}: {missing}.")
    tokenizer = load_tokenizer(str(folder))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=getattr(torch, dtype),
                                                                   use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise DPORecipesError(f"reward model {path}: cannot load it as a sequence classifier ({exc}).") from None
    if model.config.num_labels != 1:
        raise DPORecipesError(f"reward model {path}: it has {model.config.num_labels} output labels; a reward model "
                              "has one (num_labels=1, a scalar reward).")
    if model.config.pad_token_id is None:  # sequence classifiers find each text's last token through the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def reward_text(tokenizer, row: PromptRow, answer: str) -> str:
    """What the reward model reads: its chat template over prompt + answer, else prompt, newline, answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(row.messages + [{"role": "assistant", "content": answer}], tokenize=False)
    prompt = row.prompt if isinstance(row.prompt, str) else "\n\n".join(m["content"] for m in row.prompt)
    return f"{prompt}\n{answer}"


def reward_model_scorer(path: str, batch_size: int = 8, dtype: str = "float32") -> Scorer:
    import torch

    model, tokenizer = load_reward_model(path, dtype)
    templated = bool(getattr(tokenizer, "chat_template", None))

    def score(rows, answers):
        texts = [reward_text(tokenizer, row, answer) for row, answer in zip(rows, answers)]
        tokenizer.padding_side = "right"
        device = next(model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not templated).to(device)
            with torch.no_grad():
                scores.extend(model(**enc).logits[:, 0].float().tolist())
        return scores, None

    describe = {"type": "reward_model", "path": str(path), "fingerprint": weights_fingerprint(model)}
    return Scorer("reward_model", describe, score)


def build_scorer(spec="verifier", verifier: Verifier | None = None, batch_size: int = 8,
                 dtype: str = "float32") -> Scorer:
    """A `Scorer` from 'verifier', a reward-model folder, 'module:function' / 'file.py:function', or a callable
    function(prompt, answer, row) -> float. A `Scorer` is returned as it is."""
    if isinstance(spec, Scorer):
        return spec
    if callable(spec):
        return function_scorer(spec, function_name(spec))
    text = str(spec)
    if text == "verifier":
        if verifier is None:
            raise DPORecipesError("--scorer verifier needs a verifier: set --verifier (or a 'check' on every row).")
        return verifier_scorer(verifier)
    if Path(text).expanduser().is_dir():
        return reward_model_scorer(text, batch_size, dtype)
    if ":" in text:
        return function_scorer(load_function(text), text)
    raise DPORecipesError(f"--scorer {text}: use 'verifier', a reward-model folder (no such folder here), or "
                          "module:function.")
