"""Before/after evaluation: greedy answers to held-out prompts, and what changed.

Three questions a user of an identity (or any behaviour) run asks:
- did the model learn it? `identity_rate`: share of identity prompts whose answer contains the new name;
- did it leak? `leaks`: general prompts whose answer now mentions the name;
- did it break? `degenerate`: answers that fall into repetition; `unchanged`: general answers that stay the same
  in substance (character-level similarity to the before-answer, see `SAME_SUBSTANCE_RATIO`).

The answers before training are kept in OUTPUT_DIR/eval_answers_before.json (`answers_before_training`), so a rerun
of a run stopped after training does not answer the prompts again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rapidfuzz import fuzz

from dpo_recipes.data.lengths import CJK_RANGES
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.progress import bar
from dpo_recipes.jsonio import write_json_atomic

logger = logging.getLogger(__name__)

# Two greedy answers count as the same in substance when their rapidfuzz `ratio` (0-100, normalized
# Indel similarity) is at least this. A reworded ending scores ~70-90; a different answer scores < 50.
SAME_SUBSTANCE_RATIO = 60.0


def generate_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 16,
                     openings: list[str] | None = None, repetition_penalty: float = 1.0) -> list[str]:
    """Greedy answers, one per user prompt, through `render_prompt` (batched, left-padded).

    `repetition_penalty` > 1: CTRL's penalty (Keskar et al. 2019) on the answer's own tokens, through transformers'
    `RepetitionPenaltyLogitsProcessor(prompt_ignore_length=...)`; `generate(repetition_penalty=)` would also weigh the
    prompt's ("叫" of "你叫什么？" against "我叫Athene"). 1.0: plain greedy, which a small model often ends in a loop.

    `openings` (optional, one per prompt) starts each assistant turn with that text and lets the model continue;
    the returned answer includes it.
    """
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    answers: list[str] = []
    device = next(model.parameters()).device
    openings = openings or [""] * len(prompts)
    progress = bar(len(prompts), "Answering the evaluation prompts", unit="prompts") if prompts else None
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        heads = openings[start:start + batch_size]
        texts = [render_prompt(tokenizer, p) + head for p, head in zip(chunk, heads)]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        prompt_length = enc["input_ids"].shape[1]  # left padding: every row's answer starts here
        penalty = [RepetitionPenaltyLogitsProcessor(float(repetition_penalty), prompt_length)] \
            if repetition_penalty != 1.0 else []
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
                                 logits_processor=LogitsProcessorList(penalty))
        for head, row in zip(heads, out[:, prompt_length:]):
            answers.append((head + tokenizer.decode(row, skip_special_tokens=True)).strip())
        progress.update(len(chunk))
    if progress is not None:
        progress.close()
    if was_training:
        model.train()
    return answers


def render_prompt(tokenizer, prompt: str) -> str:
    """The text a model sees for a user prompt: its chat template with the generation prompt; a tokenizer without
    one (a base model) sees the prompt as is, as DPOTrainer feeds it plain prompt strings in training."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def mentions(text: str, name: str) -> bool:
    """Whether `text` names `name` (case-insensitive, as a word in Latin script, anywhere in CJK text)."""
    return re.search(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])", text, flags=re.IGNORECASE) is not None


# A unit of text for the loop check: one CJK character (Han, kana, Hangul: scripts written without spaces), or one
# run of letters and digits in any other script; punctuation and spaces separate units and are not units.
_UNIT_CJK = re.compile(f"[{CJK_RANGES}]")
_UNIT = re.compile(f"[{CJK_RANGES}]|[^\\W_{CJK_RANGES}]+")
_SYMBOL_RUN = re.compile(r"([^\w\s.\-=_*#~])\1{4,}")


def loop_units(text: str) -> list[str]:
    """The units `is_degenerate` compares: each CJK character, each word elsewhere, lower-cased."""
    return [u.lower() for u in _UNIT.findall(text)]


def is_degenerate(text: str, ngram: int = 4, max_repeats: int = 3) -> bool:
    """True when the answer loops, in any script (a CJK character counts as a word):

    - a phrase of 2 or more units said `max_repeats` times in a row ("我叫Athene，我叫Athene，我叫Athene"; a last
      repeat cut off by the end of the answer counts, as generation stops mid-loop at max_new_tokens), or one unit 5
      times in a row;
    - an `ngram`-unit phrase said `max_repeats` times anywhere ("a gentle rain, ... a gentle rain ..."); in text that
      is mostly CJK, a phrase of 1.5 x `ngram` characters (a Chinese word is one to three characters);
    - a symbol or emoji 5 times in a row ("🌟🌟🌟🌟🌟", "；；；；；"; not . - = _ * # ~, which rules and ellipses use);
    - a sentence of more than 10 characters said twice verbatim.
    A list that names its items with the same word ("Red (Athene) Blue (Athene) Yellow (Athene)") is not a loop.
    """
    if _SYMBOL_RUN.search(text):
        return True
    units = loop_units(text)
    n = len(units)
    if sum(len(u) == 1 and _UNIT_CJK.match(u) is not None for u in units) * 2 > n:
        ngram = ngram + ngram // 2
    for size in range(1, n // 2 + 1):
        needed = 5 if size == 1 else max_repeats
        for i in range(n - 2 * size + 1):
            phrase = units[i:i + size]
            repeats = 1
            while units[i + repeats * size:i + (repeats + 1) * size] == phrase:
                repeats += 1
            rest = units[i + repeats * size:]
            cut_short = size > 1 and rest and len(rest) < size and phrase[:len(rest)] == rest  # max_new_tokens hit
            if repeats + (1 if cut_short else 0) >= needed:
                return True
    counts: dict[tuple, int] = {}
    for i in range(n - ngram + 1):
        key = tuple(units[i:i + ngram])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= max_repeats:
            return True
    sentences = [s.strip().lower() for s in re.split(r"[.!?。！？\n]+", text) if len(s.strip()) > 10]
    return len(sentences) != len(set(sentences))


def same_substance(before: str, after: str) -> bool:
    """Whether two answers to the same prompt say the same thing (see `SAME_SUBSTANCE_RATIO`)."""
    return fuzz.ratio(before, after) >= SAME_SUBSTANCE_RATIO


@dataclass
class EvalResult:
    """Answers and rates for one pass (before or after training) over the evaluation prompts."""

    prompts: list[dict]
    answers: list[str]
    identity_rate: float | None = None
    leaks: list[int] = field(default_factory=list)
    degenerate: list[int] = field(default_factory=list)
    identity_hits: list[int] = field(default_factory=list)
    repetition_penalty: float = 1.0  # how the answers were decoded (`generate_answers`)

    def identity_prompts_by_script(self) -> dict[str, list[int]]:
        """The identity prompts written in CJK and the others ('cjk', 'other'), for each present."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.prompts):
            if p["kind"] == "identity":
                groups.setdefault("cjk" if _UNIT_CJK.search(p["prompt"]) else "other", []).append(i)
        return groups


def score_answers(prompts: list[dict], answers: list[str], name: str | None,
                  repetition_penalty: float = 1.0) -> EvalResult:
    """Rates for a pass: `prompts` are {'prompt', 'kind'} with kind 'identity' or 'general'."""
    identity = [i for i, p in enumerate(prompts) if p["kind"] == "identity"]
    general = [i for i, p in enumerate(prompts) if p["kind"] == "general"]
    rate = None
    degenerate = [i for i in range(len(answers)) if is_degenerate(answers[i])]
    # an answer that loops on the name has not learned who it is: not a hit
    hits = [i for i in identity if name and mentions(answers[i], name) and i not in degenerate]
    if name and identity:
        rate = len(hits) / len(identity)
    leaks = [i for i in general if name and mentions(answers[i], name)]
    return EvalResult(prompts, answers, rate, leaks, degenerate, hits, repetition_penalty)


def compare(before: EvalResult, after: EvalResult) -> dict:
    """Summary figures of a before/after pair, as they go into summary.json."""
    general = [i for i, p in enumerate(before.prompts) if p["kind"] == "general"]
    unchanged = [i for i in general if same_substance(before.answers[i], after.answers[i])]
    groups = after.identity_prompts_by_script() if after.identity_rate is not None else {}
    hits = set(after.identity_hits)
    by_script = {script: len(hits.intersection(group)) / len(group) for script, group in groups.items()}
    return {
        "heldout_identity_rate_before": before.identity_rate,
        "heldout_identity_rate_after": after.identity_rate,
        # per script when the identity prompts mix them (the default run asks in English and in Chinese)
        **({"heldout_identity_rate_after_by_script": by_script,
            "n_identity_prompts_by_script": {script: len(group) for script, group in groups.items()}}
           if len(by_script) > 1 else {}),
        "general_unchanged_rate": len(unchanged) / len(general) if general else None,
        "general_identical_rate": (sum(before.answers[i] == after.answers[i] for i in general) / len(general)
                                   if general else None),
        "general_identity_leaks_after": len(after.leaks),
        "degenerate_answers_before": len(before.degenerate),
        "degenerate_answers_after": len(after.degenerate),
        # answers that loop after training to prompts whose base answer did not: the loops the run itself made
        "degenerate_answers_added": len(set(after.degenerate) - set(before.degenerate)),
        "degenerate_identity_answers_after": sum(before.prompts[i]["kind"] == "identity" for i in after.degenerate),
        "n_identity_prompts": sum(p["kind"] == "identity" for p in before.prompts),
        "n_general_prompts": len(general),
        # greedy, with CTRL's penalty on each answer's own tokens when above 1 (`generate_answers`)
        "answers_repetition_penalty": after.repetition_penalty,
    }


def general_kl(model, tokenizer, before: EvalResult, batch_size: int = 8) -> float | None:
    """How far training moved the model on general prompts: the mean per-token KL(trained || base), in nats,
    teacher-forced on the base model's own greedy answers to the held-out general prompts (`before.answers`).

    A string check ('unchanged' answers) sees only the greedy path; this sees the whole next-token distribution at
    every answer position, so small drifts count and reworded-but-equal answers do not. The base is the model with its
    LoRA adapter disabled, so it needs a PEFT model; None otherwise (a full-parameter run keeps no base copy), and None
    without general prompts or answers.
    """
    import torch.nn.functional as F

    general = [i for i, p in enumerate(before.prompts) if p["kind"] == "general" and before.answers[i]]
    if not general or not hasattr(model, "disable_adapter"):
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    progress = bar(len(general), "Measuring the drift on general prompts", unit="prompts")
    for start in range(0, len(general), batch_size):
        chunk = general[start:start + batch_size]
        progress.update(len(chunk))
        prompt_ids = [tokenizer(render_prompt(tokenizer, before.prompts[i]["prompt"]), add_special_tokens=False)
                      ["input_ids"] for i in chunk]
        answer_ids = [tokenizer(before.answers[i], add_special_tokens=False)["input_ids"] for i in chunk]
        width = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)  # positions whose next token is an answer token
        for row, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
            ids[row, :len(p) + len(a)] = torch.tensor(p + a)
            mask[row, :len(p) + len(a)] = 1
            scored[row, len(p) - 1:len(p) + len(a) - 1] = True
        ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
        with torch.no_grad():
            trained = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            with model.disable_adapter():
                base = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        kl = (trained.exp() * (trained - base)).sum(-1)
        total += float(kl[scored].sum())
        tokens += int(scored.sum())
    progress.close()
    if was_training:
        model.train()
    return total / tokens if tokens else None


def before_after_table(before: EvalResult, after: EvalResult, width: int = 60) -> str:
    """A plain-text table of prompt / before / after. Each answer is followed by its marks: `~` it loops (before
    training: a loop the base model already had), `!` a general answer that names the identity; a legend ends it."""

    def cell(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = [f"{'kind':8} | {'prompt':34} | {'before':{width + 2}} | after"]
    lines.append("-" * len(lines[0]))
    for i, p in enumerate(before.prompts):
        was = "~" if i in before.degenerate else ""
        flags = ("!" if i in after.leaks else "") + ("~" if i in after.degenerate else "")
        lines.append(f"{p['kind'][:8]:8} | {cell(p['prompt'])[:34]:34} | {cell(before.answers[i]):{width}} {was:1} | "
                     f"{cell(after.answers[i])} {flags}".rstrip())
    lines.append("~ the answer loops   ! a general answer names the identity")
    return "\n".join(lines)


def load_eval_prompts(path: str | None) -> list[dict]:
    """Read a JSONL of {'prompt': str, 'kind': 'identity'|'general'}; [] when `path` is None."""
    if not path:
        return []
    prompts = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DPORecipesError(f"{path}:{number}: invalid JSON ({exc.msg}).") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                    raise DPORecipesError(f"{path}:{number}: field 'prompt' must be a string.")
                if row.get("kind", "general") not in ("identity", "general"):
                    raise DPORecipesError(f"{path}:{number}: field 'kind' must be 'identity' or 'general'.")
                prompts.append({"prompt": row["prompt"], "kind": row.get("kind", "general")})
    except OSError as exc:
        raise DPORecipesError(f"{path}: cannot read the evaluation prompts ({exc.strerror}).") from None
    return prompts


def evaluate_prompts(model, tokenizer, prompts: list[dict], recipe_args) -> EvalResult:
    """Greedy answers to `prompts` (`--eval_repetition_penalty` on their own tokens) scored against `identity_name`."""
    penalty = recipe_args.eval_repetition_penalty
    answers = generate_answers(model, tokenizer, [p["prompt"] for p in prompts],
                               max_new_tokens=recipe_args.eval_max_new_tokens, batch_size=recipe_args.eval_batch_size,
                               repetition_penalty=penalty) if prompts else []
    return score_answers(prompts, answers, recipe_args.identity_name, penalty)


BEFORE_ANSWERS_FILE = "eval_answers_before.json"


def before_answers_key(model, tokenizer, prompts: list[dict], recipe_args, model_key: dict) -> str:
    """sha256 over what decides the greedy answers before training: the model (name, revision, config hash from the
    run record `model_key`; dtype, attention, quantization, generation config as loaded), the prompt texts, the
    generation settings, the chat template and special tokens, and the transformers and torch versions."""
    import transformers

    config = getattr(model, "config", None)
    generation = getattr(model, "generation_config", None)
    fields = {
        **{k: model_key.get(k) for k in ("model", "revision", "config_sha256")},
        "dtype": str(getattr(model, "dtype", None)),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "quantization": str(getattr(config, "quantization_config", None)),
        "generation_config": generation.to_json_string(use_diff=False) if generation is not None else None,
        "prompts": [p["prompt"] for p in prompts],
        "max_new_tokens": recipe_args.eval_max_new_tokens,
        "repetition_penalty": recipe_args.eval_repetition_penalty,
        "batch_size": recipe_args.eval_batch_size,  # left padding within a batch can move a greedy answer
        "chat_template": getattr(tokenizer, "chat_template", None),
        "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token, "vocab_size": len(tokenizer),
        "transformers": transformers.__version__, "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _stored_before_answers(path: Path, key: str, count: int, log) -> list[str] | None:
    """The answers in `path` when it holds `count` of them made under `key`; None (and why, logged) otherwise."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or not isinstance(stored.get("key"), str):
            raise ValueError("no 'key'")
        if stored["key"] != key:
            log(logging.INFO, "%s was made with another model, prompts or generation settings: answering again", path)
            return None
        answers = stored.get("answers")
        if not (isinstance(answers, list) and len(answers) == count and all(isinstance(a, str) for a in answers)):
            raise ValueError(f"'answers' is not a list of {count} strings")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        log(logging.WARNING, "%s is unreadable (%s): answering the evaluation prompts before training again",
            path, exc)
        return None
    return answers


def answers_before_training(model, tokenizer, prompts: list[dict], recipe_args, output_dir,
                            model_key: dict) -> EvalResult:
    """`evaluate_prompts` for the base model, kept in OUTPUT_DIR/eval_answers_before.json and reused by a rerun.

    The stored answers are reused when their key (`before_answers_key`: `model_key` is the run record's model
    identity, plus dtype, prompts, generation settings, chat template, library versions) matches; otherwise (absent,
    other key, unreadable) they are generated and the main process writes the file atomically. Only the answers are
    stored: the scores are recomputed. With several processes every one reads the file before the main one writes it,
    so all reuse or all generate (generation under ZeRO-3 needs every process).
    """
    from accelerate import PartialState

    if not prompts:
        return evaluate_prompts(model, tokenizer, prompts, recipe_args)
    state = PartialState()

    def log(level, message, *args):
        if state.is_main_process:
            logger.log(level, message, *args)

    path = Path(output_dir) / BEFORE_ANSWERS_FILE
    key = before_answers_key(model, tokenizer, prompts, recipe_args, model_key)
    answers = _stored_before_answers(path, key, len(prompts), log)
    state.wait_for_everyone()  # every process has decided before the file can change
    if answers is not None:
        log(logging.INFO, "reused the %d answers before training from %s", len(answers), path)
        return score_answers(prompts, answers, recipe_args.identity_name, recipe_args.eval_repetition_penalty)
    result = evaluate_prompts(model, tokenizer, prompts, recipe_args)
    if state.is_main_process:
        write_json_atomic(path, {"key": key, "model": model_key.get("model"), "prompts": [p["prompt"] for p in prompts],
                                 "answers": result.answers})
    return result
