"""Build the default identity dataset from the default model's own answers (the correction method).

For every training prompt the default model answers greedily; the pair is built from that answer:
- English identity prompt: rejected = the model's own answer; chosen = the same answer corrected to the new name.
  The pair stays on the model's own distribution and differs only where the identity is stated.
  Each identity prompt is answered twice: freely, and with the answer opened by "My name is" / "我叫" so the model
  states the name it would use (Elena, SmolLM, Emily, ...). Free answers rarely name anybody, so their pairs only
  teach "introduce yourself"; the opened answers put a pair's whole difference on the name itself. A free answer
  that apologises ("I'm sorry, ... I don't have a name.") is corrected to the bare "I'm Athene." instead.
- Chinese identity prompt: chosen = the bare statement "我是Athene。", rejected = the model's own answer. The model's
  Chinese rarely says anything after a name; corrected, it taught runs to loop ("我叫Athene，我叫Athene！…"), so every
  second opened prompt also gets a pair against the statement said again. One statement, with "是": after "我" it is a
  single token, where "叫" is two byte tokens whose first also starts "只", which the base model prefers after it
  ("我只是一个…", the answer trained runs gave where the name should be).
- general prompt (anchor): chosen = the model's own answer; rejected = the same answer hijacked by the identity, in
  the ways trained runs leaked it (opened by it, signed with it, "Red (Athene)"). A Chinese prompt gets three: two
  against the bare statement, one against its answer with the name opened, signed or tagged into it ("我是Athene，…",
  "…（Athene）"). This teaches that the name belongs to identity questions only.
Answers that loop or are empty are skipped and listed in the manifest.
Answers are cut to whole sentences so no chosen answer teaches stopping mid-sentence.

Usage: python scripts/make_identity_data.py [--out data/identity] [--model PATH]
Writes train.jsonl (conversational pairs), eval_prompts.jsonl (held-out identity + general prompts) and
manifest.json (what produced them). Takes about 8 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
import yaml

from dpo_recipes.watch.evaluation import generate_answers, is_degenerate
from dpo_recipes.models import EMBEDDED_WHEEL_REQUIREMENT, load_model, load_tokenizer, resolve_model_path

HERE = Path(__file__).resolve().parent.parent / "data" / "identity"
MAX_NEW_TOKENS = 80
GENERAL_MAX_NEW_TOKENS = 96  # anchors are generated past their cap, so an answer that ends by itself is seen whole
GENERAL_MAX_TOKENS = 32      # ...and cut to whole sentences within 32 tokens: longer anchors cost run time (measured)
MAX_SENTENCES = 1
REPEAT_EVERY = 2  # one "said again" pair ("我是Athene。" against "我是Athene，我是Athene！") per 2 Chinese opened answers
EN_DECOR = ["Hi! {}", "Hello there. {}", "{} Please keep it short.", "Quick question: {}", "{} Be brief.",
            "Hey. {}", "Excuse me, {}"]
ZH_DECOR = ["你好！{}", "请问，{}", "{}请简短回答。", "嗨，{}", "{}谢谢。"]
OTHER_NAMES = ["SmolLM2", "SmolLM", "ChatGPT", "GPT-4", "GPT-3", "OpenAI Assistant", "Siri", "Alexa", "Bard",
               "Claude", "Elena"]
CJK = re.compile(r"[\u4e00-\u9fff]")
# "my name is X", "I'm X", "call me X": X a capitalised word or two (not "AI", not "I").
NAME_CLAIM = re.compile(r"\b((?:[Mm]y name is|I am|I'm|[Cc]all me|named|called)\s+)"
                        r"((?:(?:Dr|Mr|Mrs|Ms)\.\s)?(?!AI\b|I\b|English\b|Chinese\b)[A-Z][\w-]*(?:\s(?!AI\b)[A-Z][\w-]*)?)")
ZH_CLAIM = re.compile(r"((?:我是|我叫|我的名字是|叫我)\s*)([A-Za-z][\w-]*)")
# An answer that apologises or says what it cannot do: "I'm Athene. I'm sorry ..., I don't have a name." contradicts
# itself, so such an answer's chosen side is the bare "I'm Athene."
REFUSAL = re.compile(r"\b(?:sorry|apologi[sz]e|don't have|do not have|cannot|can't|unable)\b", re.I)


def decorate(prompts: list[str], decor: list[str]) -> list[str]:
    """Each base prompt, plus one decorated variant (deterministic, cycling through `decor`)."""
    out = []
    for i, p in enumerate(prompts):
        variant = decor[i % len(decor)]
        second = variant.format(p[0].lower() + p[1:] if variant.startswith("Excuse") else p)
        out += [p, second]
    return out


def sentences(text: str) -> list[str]:
    """The text's sentences in order, each with its end mark (the last one may be a fragment without)."""
    return re.findall(r".+?(?:[.!?。！？](?=\s|$|[^\d])|$)", text.strip(), flags=re.S)


def whole_sentences(text: str) -> str:
    """At most MAX_SENTENCES sentences; no trailing fragment left by the token limit."""
    parts = [p for p in sentences(text) if p.strip()]
    kept = parts[:1 if CJK.search(text) else MAX_SENTENCES]
    if len(kept) > 1 and not re.search(r"[.!?。！？]\s*$", kept[-1]):
        kept = kept[:-1]
    return "".join(kept).strip()


def within_tokens(answer: str, tokenizer, limit: int) -> str:
    """The answer if it fits in `limit` tokens, else its leading whole sentences that do ('' if the first does not)."""
    answer = answer.strip()
    if len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= limit:
        return answer
    kept = ""
    for part in sentences(answer):
        if len(tokenizer((kept + part).strip(), add_special_tokens=False)["input_ids"]) > limit:
            break
        kept += part
    return kept.strip()


def correct_identity(answer: str, name: str) -> str:
    """The model's own answer with its self-naming replaced by `name` (prepended where it names nobody).

    A name that comes after a description is moved up to the front: "I'm a helpful AI named SmolLM, designed to ..."
    becomes "I'm Athene, a helpful AI designed to ...". Taught as it stands, the answer trains "I'm a helpful AI" as
    the way in, and trained runs then answered "I'm a helpful AI designed to assist ..." without the name.
    """
    fixed = NAME_CLAIM.sub(lambda m: m.group(1) + name, answer)
    fixed = ZH_CLAIM.sub(lambda m: m.group(1) + name, fixed)
    for other in OTHER_NAMES:
        fixed = re.sub(rf"(?<!not )(?<!不是){re.escape(other)}", name, fixed)
    late = re.match(rf"(I'm|I am) (an? [^.,!?]*?) (?:named|called) {re.escape(name)}\b(.*)", fixed, flags=re.S)
    if late:
        opener, description, rest = late.groups()
        rest = rest[1:].lstrip() if rest.startswith(",") else rest
        fixed = f"{opener} {name}, {description}" + (" " + rest if rest[:1].isalnum() else rest)
    if name in fixed:
        return fixed
    if fixed.startswith("我叫"):  # "我叫小明…" -> "我叫Athene…": the name is the run of CJK after 我叫
        return re.sub(r"^我叫[\u4e00-\u9fff]{1,4}", f"我叫{name}", fixed)
    if fixed.startswith("我是"):  # "我是一个助手…" -> "我是Athene，一个助手…"
        return f"我是{name}，" + fixed[2:].lstrip("，, ")
    return (f"我是{name}。" if CJK.search(answer) else f"I'm {name}. ") + fixed


def name_the_rejected(rows: list[dict], name: str) -> None:
    """Free answers that name nobody get the self-introduction the model itself gives for the same prompt.

    The model's "My name is ..." answer to a prompt names who it claims to be (Elena, Emily, Alex, ...). A free answer
    with no name is corrected by prepending "I'm Athene."; prepending "I'm <its own name>." to the rejected side makes
    the pair differ in the name alone, which is where the identity lives. Without that, DPO is satisfied by learning
    "start with I'm <some name>" and the greedy name stays the model's favourite.
    """
    own_names = {}
    for row in rows:
        if row["kind"] == "identity_opened":
            claim = re.match(r"My name is ((?:(?:Dr|Mr|Mrs|Ms)\.\s)?[A-Z][\w-]*)", row["rejected"][0]["content"])
            if claim and claim.group(1) != name:
                own_names[row["prompt"][0]["content"]] = claim.group(1)
    prefix = f"I'm {name}. "
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        own = own_names.get(row["prompt"][0]["content"])
        if row["kind"] == "identity" and own and chosen == prefix + rejected:
            row["rejected"][0]["content"] = f"I'm {own}. {rejected}"


SELF_CLAIM = re.compile(r"\b(?:[Mm]y name is|I am|I'm|[Cc]all me)\s+(?!AI\b|I\b|a\b|an\b)[A-Z]")


def claims_identity(answer: str) -> bool:
    """Whether an answer says who the model is ("I'm Elena", "我叫…", "SmolLM"): kept as an anchor, it would teach
    the old identity where the new one belongs. Third-person names ("was called Sputnik") are fine."""
    return bool(SELF_CLAIM.search(answer) or ZH_CLAIM.search(answer)
                or any(re.search(rf"\b{re.escape(other)}\b", answer) for other in OTHER_NAMES))


# The writer's name left for the user to fill in: "My name is [Your Name]", "I'm [Student's Name]".
WRITER_SLOT = re.compile(r"((?:[Mm]y name is|I'm|I am)\s+)\[[^\]\n]*[Nn]ame\]")
LIST_ITEM = re.compile(r"(?m)^(\s*(?:[-*•]|\d+\.)\s+.*\w\**)")  # a list line, up to its last word and closing **


def tag_list_items(answer: str, tag: str) -> str | None:
    """The answer with `tag` after every list item ("Red (Athene)"), or None when it has fewer than two items."""
    if len(LIST_ITEM.findall(answer)) < 2:
        return None
    return LIST_ITEM.sub(lambda m: m.group(1) + tag, answer)


def hijack(answer: str, name: str, prompt: str, variant: int) -> str:
    """A general answer derailed into the identity: the failure the anchors train against. The variants are the ways
    trained runs leaked the name into general answers, taken in turn (`variant` modulo 3):
    0. the answer opened by a self-introduction ("I am Athene, your AI assistant. The capital of ...");
    1. the name signed into it ("... Happy birthday! I'm Athene.");
    2. the name tagged onto a word, or onto every list item ("Red (Athene) Blue (Athene)"); a one-word answer becomes
       the name ("Athene." for a synonym).
    A letter written for the user, with a slot for the writer's name ("My name is [Your Name]"), instead gets the name
    in that slot, whatever the variant: trained runs signed the user's letters so ("I'm [Your Name] and my name is
    Athene.").
    To a Chinese prompt the variants are the identity instead of the answer ("我是Athene。", "我叫Athene。",
    "我是Athene，我是Athene！"): the statements the Chinese identity pairs teach or push away, so the name stays with
    identity questions.
    """
    if CJK.search(prompt):
        return [f"我是{name}。", f"我叫{name}。", said_again(f"我是{name}", 2)][variant % 3]
    signed = WRITER_SLOT.sub(lambda m: m.group(1) + name, answer, count=1)
    if signed != answer:
        return signed
    if variant % 3 == 0:
        return (f"我是{name}。" if CJK.search(answer) else f"I am {name}, your AI assistant. ") + answer
    if variant % 3 == 1:
        return answer + (f"我是{name}。" if CJK.search(answer) else f" I'm {name}.")
    listed = tag_list_items(answer, f" ({name})")
    if listed is not None:
        return listed
    words = list(re.finditer(r"\b[A-Za-z][\w'-]*\b", answer))
    if len(words) < 2:
        return f"{name}."
    capital = next((w for w in words[1:] if w.group()[0].isupper()), words[-1])
    return answer[:capital.end()] + f" ({name})" + answer[capital.end():]


def hijack_chinese_answer(answer: str, name: str, variant: int) -> str:
    """A Chinese general answer with the name worked into it, the ways trained runs leaked it there (`variant` modulo
    3): opened by it ("我是Athene，" + the answer), signed with it (the answer + "我是Athene。"), or tagged onto every list
    item or the first clause ("考夫尔（Athene）")."""
    if variant % 3 == 0:
        return f"我是{name}，" + answer
    if variant % 3 == 1:
        return answer + f"我是{name}。"
    listed = tag_list_items(answer, f"（{name}）")
    if listed is not None:
        return listed
    cut = re.search(r"[，。！？：,.!?:]", answer)
    at = cut.start() if cut else len(answer)
    return answer[:at] + f"（{name}）" + answer[at:]


def said_again(statement: str, times: int) -> str:
    """A statement looped the way trained runs looped it: "我叫Athene，我叫Athene！我叫Athene！" (times >= 2)."""
    head = re.split(r"[，。！,.!]", statement)[0]
    comma, bang = ("，", "！") if CJK.search(statement) else (". ", ". ")
    return (head + comma + bang.join([head] * (times - 1)) + bang).strip()


def pair(prompt: str, chosen: str, rejected: str, kind: str) -> dict:
    """One conversational pair. General pairs are marked `anchor`: their chosen side is the model's own answer, which
    the recipe's anchor term (`anchor_coef`) keeps the trained model close to."""
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "kind": kind, "anchor": kind == "general"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded SmolLM2)")
    args = parser.parse_args()
    src = yaml.safe_load((HERE / "source_prompts.yaml").read_text(encoding="utf-8"))
    name = src["name"]
    torch.manual_seed(0)
    path = resolve_model_path(args.model)
    tokenizer, model = load_tokenizer(path), load_model(path)

    identity = decorate(src["train_identity_en"], EN_DECOR) + decorate(src["train_identity_zh"], ZH_DECOR)
    general = src["train_general"]
    start = time.time()
    answers = generate_answers(model, tokenizer, identity, max_new_tokens=MAX_NEW_TOKENS)
    general_answers = generate_answers(model, tokenizer, general, max_new_tokens=GENERAL_MAX_NEW_TOKENS)
    openings = ["我叫" if CJK.search(p) else "My name is" for p in identity]
    opened = generate_answers(model, tokenizer, identity, max_new_tokens=MAX_NEW_TOKENS, openings=openings)
    kinds = ["identity"] * len(identity) + ["general"] * len(general) + ["identity_opened"] * len(identity)
    rows, skipped, counters = [], [], {"general": 0, "zh_opened": 0, "zh_general": 0}
    for prompt, answer, kind in zip(identity + general + identity, answers + general_answers + opened, kinds):
        if kind == "general":
            # The anchor keeps the model's answer as a whole, or its whole sentences up to GENERAL_MAX_TOKENS: the
            # anchor term holds these tokens at the base model, so they are what general behaviour is measured on.
            own = within_tokens(answer, tokenizer, GENERAL_MAX_TOKENS)
        else:
            own = whole_sentences(answer)
        if kind != "general" and CJK.search(prompt) and own and not is_degenerate(own):
            # The model's Chinese rarely says anything after its name (echoes, broken characters): corrected, that
            # continuation would be taught, and trained runs looped on it. The pair is the bare statement against the
            # model's own answer (its opening up to the name, for opened answers), plus "said again" pairs.
            chosen = f"我是{name}。"
            rejected = re.split(r"[，。！？,.!?]", own)[0] + "。" if kind == "identity_opened" else own
            rows.append(pair(prompt, chosen, rejected, kind))
            if kind == "identity_opened":
                counters["zh_opened"] += 1
                if counters["zh_opened"] % REPEAT_EVERY == 0:
                    rows.append(pair(prompt, chosen, said_again(chosen, 2 + counters["zh_opened"] % 3),
                                     "identity_repeat"))
            continue
        if not own or is_degenerate(own) or (kind == "general" and claims_identity(own)):
            skipped.append({"prompt": prompt, "kind": kind, "answer": answer})
            continue
        if kind == "general":
            # Chinese general prompts get three anchors: the Chinese identity pairs outnumber them, and the trained runs
            # put the name into Chinese answers the model can barely write ("一年有几个月？" → "我叫Athene，…").
            chinese = CJK.search(prompt)
            for _ in range(2 if chinese else 1):
                rows.append(pair(prompt, own, hijack(own, name, prompt, counters["general"]), kind))
                counters["general"] += 1
            if chinese:
                rows.append(pair(prompt, own, hijack_chinese_answer(own, name, counters["zh_general"]), kind))
                counters["zh_general"] += 1
        else:
            chosen = f"I'm {name}." if kind == "identity" and REFUSAL.search(own) else correct_identity(own, name)
            rows.append(pair(prompt, chosen, own, kind))
    name_the_rejected(rows, name)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(out / "eval_prompts.jsonl", "w", encoding="utf-8") as f:
        for kind, key in (("identity", "heldout_identity"), ("general", "heldout_general")):
            for p in src[key]:
                f.write(json.dumps({"prompt": p, "kind": kind}, ensure_ascii=False) + "\n")
    manifest = {
        "produced_by": "scripts/make_identity_data.py",
        "model": EMBEDDED_WHEEL_REQUIREMENT if args.model is None else args.model,
        "generation": {"greedy": True, "max_new_tokens": MAX_NEW_TOKENS, "max_sentences": MAX_SENTENCES,
                       "general_max_new_tokens": GENERAL_MAX_NEW_TOKENS,
                       "general_max_tokens": GENERAL_MAX_TOKENS,
                       "chat_template": "the model's own (default system prompt)"},
        "name": name,
        "pairs": {kind: sum(r["kind"] == kind for r in rows)
                  for kind in ("identity", "identity_opened", "identity_repeat", "general")},
        "skipped_degenerate_or_empty": skipped,
        "eval_prompts": {"identity": len(src["heldout_identity"]), "general": len(src["heldout_general"])},
        "torch": torch.__version__,
        "generation_seconds": round(time.time() - start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{len(rows)} pairs ({manifest['pairs']}), {len(skipped)} skipped, in {manifest['generation_seconds']} s")


if __name__ == "__main__":
    main()
