"""A user-sized run: N preference pairs of real length through `recipes/dpo_lora.py`, timed phase by phase.

    python benchmarks/scale.py                          # 20,000 pairs, preset lora-cpu, 2 optimizer steps
    python benchmarks/scale.py --pairs 20000 --steps 1  # docs/benchmarks.md (a 4 x 8 step of long pairs: ~3 min)
    python benchmarks/scale.py --pairs 1500 --steps 1 --set per_device_train_batch_size=2 \
                               --set gradient_accumulation_steps=1 --set activation_checkpointing=true
CI runs it small through tests/test_scale_benchmark.py (200 pairs, batch 2, max_length 512, one step).

1. Writes a seeded synthetic data set in UltraFeedback-binarized layout (`prompt`, `chosen` / `rejected` as
   conversations, scores): one to three turns, conversations of 80-520 tokens (median ~310) for the model's tokenizer,
   and planted bad rows (identical answers, an empty answer, scores in the wrong order, exact duplicates) whose
   counts the run's `data_validation.json` must report.
2. Runs the recipe on it in its own process (`--preset`, default lora-cpu; the embedded model unless --model), to
   `--steps` optimizer steps, reading its output as it arrives.
3. Prints the seconds of each phase the run went through (from its `summary.json`), when the first optimizer step
   started and ended, the longest time the run printed nothing (and after which line), the peak RSS of the run's
   process against the pre-flight's memory estimate, and the pairs/s of the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "dpo_lora.py"
# ~2,000 common English words would do; these ~200 give text a BPE tokenizer splits like prose (1.2-1.4 tokens a word).
WORDS = ("the of and to in is that for it as with was on be by this are or from at an have not but which they you "
         "we can more one all would there their has been if will also when so what about other some into only time "
         "model data answer question because however training preference pair reward policy value should could "
         "between through during before after language response user assistant example explain reason result first "
         "second third finally important consider therefore system memory process output input function number "
         "people water history country school energy market design research student health family program problem "
         "company service government information development experience community environment technology science "
         "different possible several general specific simple complex clear careful quick strong light heavy early "
         "later recent common useful necessary available particular significant natural social physical political "
         "economic cultural personal public private local global national human animal plant city river mountain "
         "ocean weather season morning evening night story book letter word sentence paragraph chapter summary list "
         "table chart image color shape size weight length distance speed temperature pressure volume density "
         "write read speak listen think believe know understand remember forget learn teach build create change "
         "improve reduce increase measure compare describe identify include require provide support suggest").split()
BAD_KINDS = ("identical", "empty_field", "score_order", "duplicate")  # the validation rules that must count them


def _tokens_per_word(tokenizer) -> float:
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(3000))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / 3000


def write_pairs(path: Path, n: int, tokenizer, seed: int = 0, bad_fraction: float = 0.01) -> dict:
    """Write `n` rows to `path`; return how many bad rows of each kind it planted."""
    rng = random.Random(seed)
    per_word = _tokens_per_word(tokenizer)

    def text(tokens: float) -> str:
        words = max(3, round(tokens / per_word))
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    planted = dict.fromkeys(BAD_KINDS, 0)
    rows: list[str] = []
    good = None  # the last row planted clean: what a duplicate repeats
    while len(rows) < n:
        total = rng.triangular(80, 520, 300)   # conversation tokens (template included): median ~310
        turns = rng.choices((1, 2, 3), weights=(70, 20, 10))[0]
        overhead = 12 + 10 * (2 * turns - 1)  # the chat template's role markers, roughly
        prompt_share = rng.uniform(0.2, 0.55)
        answer = max(8.0, (total - overhead) * (1 - prompt_share))
        history: list[dict] = []
        for turn in range(turns):
            history.append({"role": "user", "content": text((total - overhead) * prompt_share / (2 * turns - 1))})
            if turn < turns - 1:
                history.append({"role": "assistant", "content": text((total - overhead) * prompt_share
                                                                     / (2 * turns - 1))})
        chosen, rejected = text(answer), text(answer * rng.uniform(0.6, 1.3))
        score_chosen, score_rejected = rng.choice((6.0, 7.0, 8.0, 9.0, 10.0)), rng.choice((1.0, 2.0, 3.0, 4.0, 5.0))
        kind = BAD_KINDS[len(rows) % len(BAD_KINDS)] if rng.random() < bad_fraction and good else None
        if kind == "identical":
            rejected = chosen
        elif kind == "empty_field":
            chosen = " "
        elif kind == "score_order":
            score_chosen, score_rejected = score_rejected, score_chosen
        if kind == "duplicate":
            rows.append(good)
        else:
            prompt = history[-1]["content"]
            rows.append(json.dumps({"prompt": prompt, "prompt_id": f"{len(rows):06d}",
                                    "chosen": [*history, {"role": "assistant", "content": chosen}],
                                    "rejected": [*history, {"role": "assistant", "content": rejected}],
                                    "score_chosen": score_chosen, "score_rejected": score_rejected}))
        if kind:
            planted[kind] += 1
        else:
            good = rows[-1]
    path.write_text("\n".join(rows) + "\n")
    return planted


def conversation_tokens(path: Path, tokenizer, sample: int = 500) -> list[int]:
    """Tokens of prompt + chosen as the chat template renders them, for a sample of rows (for the printed shape)."""
    lines = path.read_text().splitlines()[:sample]
    rendered = [tokenizer.apply_chat_template(json.loads(line)["chosen"], tokenize=False) for line in lines]
    return sorted(len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"])


def run_recipe(config: Path, extra: list[str]) -> tuple[list[tuple[float, str]], int, float]:
    """Run the recipe; return (timestamped output pieces, exit status, peak RSS in GB of its process)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TQDM_DISABLE", None)  # the progress output is what this measures
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(RECIPE), "--config", str(config), *extra], cwd=config.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    pieces: list[tuple[float, str]] = []
    buffer = b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        now = time.perf_counter() - start
        buffer += chunk
        parts = re.split(rb"[\r\n]", buffer)
        buffer = parts.pop()
        if buffer.rstrip().endswith((b"]", b"it/s]", b"s/it]")):  # a progress bar's redraw: complete without newline
            parts.append(buffer)
            buffer = b""
        pieces.extend((now, p.decode(errors="replace")) for p in parts if p.strip())
    if buffer.strip():
        pieces.append((time.perf_counter() - start, buffer.decode(errors="replace")))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return pieces, proc.returncode, usage.ru_maxrss / 1e6  # KiB -> GB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps to run (the first one is timed apart)")
    parser.add_argument("--preset", default="lora-cpu")
    parser.add_argument("--model", default=None, help="--model_name_or_path (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe flag, repeatable")
    parser.add_argument("--workdir", default=None, help="keep the data and the run here (default: a temporary folder)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dpo-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(resolve_model_path(args.model))
    data = work / f"pairs-{args.pairs}-seed{args.seed}.jsonl"
    planted = write_pairs(data, args.pairs, tokenizer, args.seed)
    lengths = conversation_tokens(data, tokenizer)
    print(f"data: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.pairs} rows; planted {planted}); conversation "
          f"tokens in the first {len(lengths)}: min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}")
    out = work / "run"
    config = work / "scale.yaml"
    config.write_text(f"preset: {args.preset}\ndataset_name: {data.name}\noutput_dir: run\nmax_steps: {args.steps}\n"
                      "eval_prompts_file: ''\nreport_to: none\nsave_strategy: 'no'\nlogging_steps: 1\n"
                      "overwrite_output_dir: true\n"
                      + (f"model_name_or_path: {args.model}\n" if args.model else ""))
    extra = []
    for item in args.set:
        key, _, value = item.partition("=")
        extra += [f"--{key}", value]
    pieces, status, peak_gb = run_recipe(config, extra)
    (work / "run-output.log").write_text("\n".join(timeline(pieces)) + "\n")
    print(f"the run's output, timed: {work / 'run-output.log'}")
    if status != 0:
        print("\n".join(text for _, text in pieces[-30:]))
        print(f"the run failed with status {status}")
        return 1
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "data_validation.json").read_text())
    return print_report(args, pieces, summary, report, planted, peak_gb)


def memory_estimate_gb(pieces: list[tuple[float, str]]) -> float | None:
    """The pre-flight's memory line, process baseline included: "memory ~1.7 GB per process (+~1 GB ...)" -> 2.7."""
    for _, text in pieces:
        found = re.search(r"memory\s+~([\d.]+) GB per process(?: \(\+~([\d.]+) GB)?", text)
        if found:
            return round(float(found.group(1)) + float(found.group(2) or 0), 2)
    return None


def timeline(pieces: list[tuple[float, str]]) -> list[str]:
    """The run's output as '  12.3 s  line', a progress bar's updates folded to their first and last."""
    def kind(text: str) -> str:
        return re.sub(r"[\d.]+", "#", text[:30])

    lines, i = [], 0
    while i < len(pieces):
        j = i
        while j + 1 < len(pieces) and kind(pieces[j + 1][1]) == kind(pieces[i][1]) and "%|" in pieces[i][1]:
            j += 1
        lines.extend(f"{t:7.1f} s  {text[:150]}" for t, text in ([pieces[i]] if i == j else [pieces[i], pieces[j]]))
        i = j + 1
    return lines


def print_report(args, pieces, summary: dict, report: dict, planted: dict, peak_gb: float) -> int:
    first_bar = next((t for t, text in pieces if re.search(rf"\b0/{args.steps}\b", text)), None)
    first_done = next((t for t, text in pieces if re.search(rf"\b1/{args.steps}\b", text)), None)
    silences = [(pieces[0][0], "(start)")] + [(b[0] - a[0], a[1]) for a, b in zip(pieces, pieces[1:])]
    longest, after = max(silences)
    print("\nphase seconds (summary.json seconds_by_stage):")
    for stage, seconds in summary.get("seconds_by_stage", {}).items():
        print(f"  {seconds:7.1f}  {stage}")
    print(f"first optimizer step: started at {first_bar if first_bar is not None else '?'} s, "
          f"done at {first_done if first_done is not None else '?'} s after the command")
    print(f"longest silence: {longest:.1f} s, after: {after[:100]!r}")
    estimate = memory_estimate_gb(pieces)
    ratio = f" ({peak_gb / estimate:.2f}x the estimate)" if estimate else ""
    print(f"peak RSS: {peak_gb:.2f} GB; pre-flight estimate {estimate} GB{ratio}")
    print(f"pairs/s over the run's steps: {summary.get('train_pairs_per_second')}; pairs trained "
          f"{summary.get('pairs_trained')}")
    counted = {kind: report["dropped"].get(kind, 0) for kind in BAD_KINDS}
    print(f"planted bad rows {planted}; counted by validation {counted}; kept {report['kept']} of "
          f"{report['total_rows']}")
    if sum(counted.values()) < sum(planted.values()):
        print(f"validation missed planted rows: {sum(planted.values()) - sum(counted.values())}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
