"""The pre-flight estimate: parameters from the model's config.json (built on the meta device, no weights), trainable
parameters (PEFT applied to that skeleton), tokens per step, memory and time. An order of magnitude, not a forecast.

Memory per process, in bytes (the formula, not a measurement):
- weights: parameters x bytes of `dtype` (float32 4, bfloat16/float16 2; bf16 autocast keeps fp32 weights);
- reference: a second copy of the weights when TRL loads one (full-parameter DPO/KTO, not precomputed); LoRA's
  reference is the base with the adapter disabled (no memory), ORPO and SimPO have none;
- gradients: trainable parameters x their bytes (LoRA adapters are fp32: PEFT's autocast_adapter_dtype);
- optimizer: AdamW keeps 2 states per trainable parameter in its dtype (8-bit optimizers 1 byte a state);
- activations, what one micro-batch keeps for its backward (`activation_bytes`): the batch times its longest pair's
  positions (padding included), times a per-position cost fitted to measured peak RSS: per decoder layer the
  backward runs through (LoRA: the adapted ones) a fixed number of bytes per hidden unit, and per scored position
  a few vocabulary-wide fp32 rows (logits, log-softmax and their gradients in TRL's chunked log-prob kernel).
  Gradient checkpointing keeps each layer's input and one layer's full set.
  Checked against benchmarks/scale.py on SmolLM2-135M on a 2-core CPU (docs/benchmarks.md): measured peaks were
  0.85-1.21x the estimate from the default run to 20,000 long pairs at batch 2-8, LoRA and full, with and without
  checkpointing. Fitted on a CPU: a GPU with flash attention keeps less, so there it errs high.

Time per optimizer step: matmul FLOPs over a measured matmul rate. FLOPs per token position and pass are 2 x the
decoder's weights (embeddings excluded) plus 2 x hidden x vocabulary for each position the LM head scores. Passes: the
policy forward, its backward (1 forward's worth for LoRA: input gradients only, and only through the adapted layers
with lora_top_fraction; 2 for full training), a recomputed forward with gradient checkpointing (also only there), and
the reference forward (none when precomputed, or when the reference cache already holds the pair; KTO also runs
both models over its mismatched KL rows). The rate: a ~0.2 s matmul probe in the training precision, times 31-40%,
the share of that peak benchmarks/throughput.py measured whole DPO steps to reach on a 2-core AVX512-BF16 CPU
(docs/speed.md). Padding to the batch's longest row, attention scores, the optimizer step and
data loading are not counted. The probe measures the machine as it is now: other jobs on it lower the rate it sees.
Against the default run at 34 steps (81 s warm, 126 s cold; it now takes 50): `dpo-recipes check recipes/configs/dpo_lora.yaml
--data` said 44-56 s with the probe at 834 GFLOP/s, so short rows (~80 tokens) and batches of 8 reach less than 31% of
the peak (in an earlier version, 30 steps in 145 s against 84-109 s at 437 GFLOP/s);
without --data, rows are taken as max_length long and the estimate is an upper bound (12-15 min there).
"""

from __future__ import annotations

import functools
import logging
import math
import textwrap
import time
from pathlib import Path

logger = logging.getLogger(__name__)

EFFICIENCY = (0.31, 0.40)  # share of the matmul peak whole DPO steps reached (docs/speed.md, benchmarks/throughput.py)
# Bytes a position keeps per hidden unit in each decoder layer the backward runs through, and per vocabulary entry
# at each scored position. Fitted to peak RSS (benchmarks/scale.py, long UltraFeedback-shaped pairs, max_length 1024,
# batch 2/4/8, with and without checkpointing; docs/benchmarks.md): in bf16 autocast on a CPU a LoRA layer keeps
# ~76 bytes a hidden unit (the fp32 residual stream and norms, the 16-bit copies autocast makes, the adapters'
# inputs), a fully trained one ~54; the LM head and loss ~5.5 fp32 vocabulary rows a scored position. Korthikanti
# et al.'s 34 bytes (pure 16-bit, GPU) undercounted CPU runs 2.7-4.5x.
# In fp32 a LoRA run keeps 1.44x what it keeps in bf16 autocast (measured at batch 2); the full-training fp32 figure
# is scaled by the same ratio, not measured.
LAYER_BYTES = {("lora", "16bit"): 76, ("full", "16bit"): 54, ("lora", "fp32"): 110, ("full", "fp32"): 78}
HEAD_BYTES = {"16bit": 22, "fp32": 32}
CPU_PROCESS_BASELINE_GB = 1.0  # RSS of Python + torch + transformers before any model (benchmarks/throughput.py runs)
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_FACTS: dict = {}  # model facts per (path, revision, attention, LoRA settings): building them costs ~0.5 s


def model_facts(model_args, training_args, fetch: bool = False) -> tuple[dict | None, str | None]:
    """(facts about the model, None) from its config.json without weights, or (None, why they are unknown).

    The embedded default is read from its cache folder (never fetched here); a hub id from the local Hugging Face cache
    only, unless `fetch` (one small download of config.json)."""
    from dpo_recipes.models import EMBEDDED_MODEL_ALIAS, embedded_model_dir, is_embedded

    name = model_args.model_name_or_path
    if is_embedded(name):
        path, name = embedded_model_dir(), EMBEDDED_MODEL_ALIAS
        if not (path / "config.json").is_file():
            return None, f"the embedded default is not fetched yet ({path}): run `dpo-recipes fetch-model`"
    else:
        path = Path(name).expanduser() if Path(name).expanduser().is_dir() else name
    lora = (model_args.use_peft, model_args.lora_r, str(model_args.lora_target_modules),
            str(model_args.lora_target_parameters), str(model_args.lora_modules_to_save), model_args.use_dora,
            model_args.lora_task_type, getattr(model_args, "lora_top_fraction", 1.0))
    key = (str(path), model_args.model_revision, model_args.attn_implementation, lora, fetch)
    if key not in _FACTS:
        import warnings

        with warnings.catch_warnings():  # transformers 5 deprecation notices from PEFT's calls, not the user's
            warnings.simplefilter("ignore", FutureWarning)
            _FACTS[key] = _read_facts(path, name, model_args, training_args, fetch)
    return _FACTS[key]


def _read_facts(path, name: str, model_args, training_args, fetch: bool) -> tuple[dict | None, str | None]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = bool(getattr(training_args, "trust_remote_code", False))
    try:
        config = AutoConfig.from_pretrained(path, revision=model_args.model_revision, trust_remote_code=trust,
                                            local_files_only=not fetch)
    except Exception as exc:  # offline hub id, private repo, malformed file: the estimate says so, the check goes on
        where = "" if fetch or Path(str(path)).is_dir() else " (not in the local Hugging Face cache; the check does " \
                                                             "not download it unless --fetch-config)"
        return None, f"config.json not readable{where}: {type(exc).__name__}"
    attention = model_args.attn_implementation
    try:  # the skeleton on the meta device: shapes only, nothing allocated
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust, attn_implementation=attention)
    except Exception:
        try:  # e.g. flash_attention_2 without flash-attn: count parameters with the default attention
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
        except Exception as exc:
            return None, f"transformers cannot build {config.model_type!r} models here ({type(exc).__name__})"
    text = config.get_text_config()
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())
    embedding = embed.weight.numel() + (head.weight.numel() if head is not None and head.weight is not embed.weight
                                        else 0)
    facts = {"name": Path(str(name)).name if Path(str(name)).is_dir() else str(name),
             "model_type": config.model_type, "params": total, "decoder_params": total - embedding,
             "hidden": text.hidden_size, "layers": text.num_hidden_layers, "vocab": text.vocab_size,
             "max_position_embeddings": getattr(text, "max_position_embeddings", None),
             "moe": hasattr(text, "output_router_logits"), "encoder_decoder": bool(config.is_encoder_decoder),
             "config_dtype": str(getattr(config, "dtype", None) or "float32").removeprefix("torch."),
             "shared_prompt_off": _shared_prompt_reason(model, attention)}
    if model_args.use_peft:
        facts.update(_lora_facts(model, model_args))
    return facts, None


def _shared_prompt_reason(model, attention: str | None) -> str | None:
    from dpo_recipes.train.shared_prompt import SUPPORTED_ATTENTION, unsupported_reason

    if attention and attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} takes no 4D mask (use sdpa or eager)"
    return unsupported_reason(model)


def _lora_facts(model, model_args) -> dict:
    """Trainable parameters of the LoRA config the recipe builds (dpo_recipes.models.lora_config), applied to the
    skeleton."""
    import torch
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dpo_recipes.models import lora_config

    try:
        config = lora_config(model_args, model)
        with torch.device("meta"):
            peft_model = get_peft_model(model, config)
    except Exception as exc:  # a target that matches nothing: PEFT says which, the recipe would stop there too
        return {"lora_problem": str(exc).splitlines()[0][:200]}
    trainable, _ = peft_model.get_nb_trainable_parameters()
    layers = model.config.get_text_config().num_hidden_layers
    return {"trainable": trainable, "adapted_layers": len(config.layers_to_transform or range(layers)),
            "lm_head_adapted": isinstance(peft_model.get_output_embeddings(), BaseTunerLayer)}


@functools.cache
def matmul_gflops(device: str, dtype_name: str, seconds: float = 0.2) -> float:
    """GFLOP/s of a square matmul in this precision on this device, the best of the repeats that fit in ~`seconds`."""
    import torch

    dtype = getattr(torch, dtype_name)

    def timed(n: int) -> float:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm-up: kernels picked, memory touched
        best, spent = float("inf"), 0.0
        while spent < seconds / 2 or best == float("inf"):
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device != "cpu":
                torch.cuda.synchronize()
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
        return 2 * n ** 3 / best / 1e9

    rough = timed(512)  # sizes the real probe: one matmul of ~1/10 of the budget
    size = int(min(4096, max(512, (rough * 1e9 * seconds / 20) ** (1 / 3))))
    return max(rough, timed(size))


def _weight_dtype(model_args, facts: dict | None) -> str:
    dtype = model_args.dtype
    if dtype in (None, "auto"):
        dtype = (facts or {}).get("config_dtype", "float32")
    return dtype if dtype in _BYTES else "float32"


def estimate(s, facts: dict | None, problem: str | None, probe: bool = True) -> dict:
    """The estimate for a rules.Setup: every figure with its unit in the key (params, tokens, GB, TFLOP, s)."""
    a, m = s.args, s.model_args
    kto = s.trainer == "kto"
    units = a.per_device_train_batch_size * a.gradient_accumulation_steps  # pairs (KTO: rows) per step per process
    name = (facts or {}).get("name", m.model_name_or_path or "the embedded default")
    out = {"recipe": s.recipe, "trainer": s.trainer, "model": name, "model_problem": problem,
           "unit": "rows" if kto else "pairs", "per_step": units, "world_size": a.world_size,
           "max_length": a.max_length, "reference": s.reference,
           "precision": "bf16 autocast" if a.bf16 else "fp16 autocast" if a.fp16 else "fp32",
           "weight_dtype": _weight_dtype(m, facts), "gradient_checkpointing": bool(a.gradient_checkpointing)}
    layout = s.data or {}
    if layout.get("positions"):
        out["positions_per_unit"] = layout["positions"]
        # the fused LM head scores completion positions only: DPO (our CPU patch, Triton on CUDA), KTO on CUDA
        compact = s.trainer == "dpo" or (kto and not s.on_cpu)
        scored = layout["completions"] if compact else layout["positions"]
    elif a.max_length:  # no data: every row as long as max_length, all of it scored (an upper bound)
        out["positions_per_unit"] = scored = (1 if kto else 2) * a.max_length
    else:
        out["positions_per_unit"] = scored = None
    out["tokens_per_step"] = units * out["positions_per_unit"] if out["positions_per_unit"] else None
    out["steps"] = a.max_steps if a.max_steps > 0 else layout.get("steps")
    if facts is None:
        return out
    full = not s.peft
    trainable = facts["params"] if full else facts.get("trainable", 0)
    h, layers = facts["hidden"], facts["layers"]
    adapted = layers if full else facts.get("adapted_layers", layers)  # lora_top_fraction: the top ones only
    out.update(params=facts["params"], trainable_params=trainable, layers=layers, adapted_layers=adapted)
    if out["positions_per_unit"] is None:
        return out

    # --- memory, GB per process --------------------------------------------------------------------------------
    wb = _BYTES[out["weight_dtype"]]
    tb = wb if full or s.zero_stage == 3 else 4  # LoRA adapters fp32 (PEFT autocast_adapter_dtype, off under ZeRO-3)
    optim = str(getattr(a.optim, "value", a.optim))
    states = 0 if "adafactor" in optim else 1 if any(k in optim for k in ("sgd", "rmsprop")) else 2
    state_bytes = 1 if "8bit" in optim or optim == "adamw_bnb_8bit" else tb
    memory = {"weights": facts["params"] * wb, "reference": facts["params"] * wb if s.reference == "copy" else 0,
              "gradients": trainable * tb, "optimizer": states * trainable * state_bytes,
              "activations": activation_bytes(s, facts, out, layout, full, adapted)}
    out["memory_gb"] = {k: v / 1e9 for k, v in memory.items()}
    out["memory_gb"]["total"] = sum(memory.values()) / 1e9

    # --- time -----------------------------------------------------------------------------------------------------
    decoder = 2 * (facts["decoder_params"] + (0 if full else trainable))
    head = 2 * h * facts["vocab"]
    per_step_ref = {"adapter": 1, "copy": 1}.get(s.reference, 0) * (2 if kto else 1)  # KTO: its KL rows too
    whole = 1 + per_step_ref + (1 if kto else 0)  # the forwards: policy, reference, KTO's KL rows
    # below the lowest adapter no graph is built: the backward and the checkpointed recompute run above it only
    depth = adapted / layers
    passes = whole + (2 if full else depth) + (depth if a.gradient_checkpointing else 0)
    # the LM head is not inside the checkpointed layers (no recompute) and its backward is whole; full training adds
    # lm_head's weight gradient
    head_passes = whole + (3 if full else 1)
    flops = units * (out["positions_per_unit"] * decoder * passes + scored * head * head_passes)
    out["tflop_per_step"] = flops / 1e12
    out["passes"] = passes
    if not probe:
        return out
    device = "cpu" if s.on_cpu else "cuda"
    precision = "bfloat16" if a.bf16 else "float16" if a.fp16 else out["weight_dtype"]
    try:
        gflops = matmul_gflops(device, precision)
    except Exception as exc:  # e.g. fp16 matmul unsupported on this CPU build
        logger.debug("matmul probe failed: %s", exc)
        return out
    out["matmul_gflops"] = gflops
    out["probe"] = f"{device} {precision}"
    out["seconds_per_step"] = tuple(flops / (gflops * 1e9 * e) for e in reversed(EFFICIENCY))
    if out["steps"]:
        run = [out["steps"] * t for t in out["seconds_per_step"]]
        if s.reference == "precomputed" and layout.get("units"):  # one no-grad forward over every pair, up front
            once = layout["units"] * (out["positions_per_unit"] * decoder + scored * head) / (gflops * 1e9)
            run = [r + once / e for r, e in zip(run, reversed(EFFICIENCY))]
        out["run_seconds"] = tuple(run)
    return out


def activation_bytes(s, facts: dict, out: dict, layout: dict, full: bool, adapted: int) -> float:
    """What one micro-batch keeps for its backward, in bytes: its longest pair's positions times the batch (a batch
    pads to its longest pair, and group_by_length puts the longest first), times what a position keeps:

    - per decoder layer the backward passes through (all of them for full training; LoRA: the adapted ones, from
      the lowest up), LAYER_BYTES x hidden (LoRA adds the 16-bit copy of each adapted projection's input that
      autocast makes for the adapter); with gradient checkpointing, only each layer's fp32 input and one layer's
      full set during its recomputation;
    - per scored position (the LM head's and the loss's vocabulary-wide tensors), HEAD_BYTES x vocabulary: the batch
      times the longest pair's answers, or the batch's positions times the data's mean answer share if more; ORPO
      and CPO score every position.
    Fitted on peak RSS of SmolLM2-135M on this project's 2-core CPU (benchmarks/scale.py, docs/benchmarks.md).
    """
    a = s.args
    h, layers, vocab = facts["hidden"], facts["layers"], facts["vocab"]
    per_unit = layout.get("positions_max") or out["positions_per_unit"]
    scored_share = (layout["completions"] / layout["positions"]) if layout.get("positions") else 1.0
    if s.trainer in ("orpo", "cpo"):
        scored_share = 1.0
    tokens = a.per_device_train_batch_size * per_unit
    precision = "16bit" if (a.bf16 or a.fp16 or _weight_dtype(s.model_args, facts) != "float32") else "fp32"
    layer = LAYER_BYTES[("full" if full else "lora", precision)] * h
    kept = layers if full else adapted
    if a.gradient_checkpointing:
        per_position = kept * h * 4 + layer
    else:
        per_position = kept * layer
    scored = tokens * scored_share
    if layout.get("completions_max") and s.trainer not in ("orpo", "cpo"):
        # the longest answers, not the mean share: mostly short answers still batch with long ones (default run)
        scored = max(scored, a.per_device_train_batch_size * layout["completions_max"])
    return tokens * per_position + scored * HEAD_BYTES[precision] * vocab


def device_memory_gb(on_cpu: bool) -> float | None:
    """This machine's memory for one process: physical RAM on a CPU, the first GPU's memory otherwise (GB)."""
    import os

    try:
        if on_cpu:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def memory_findings(e: dict, s) -> list:
    """A risky finding when the memory estimate exceeds this machine's memory (an estimate: flagged, not refused)."""
    from dpo_recipes.check.findings import Finding

    need = e.get("memory_gb", {}).get("total")
    have = device_memory_gb(s.on_cpu)
    if need is None or have is None:
        return []
    need += CPU_PROCESS_BASELINE_GB if s.on_cpu else 0
    if need <= have:
        return []
    where = "RAM" if s.on_cpu else "memory of GPU 0"
    return [Finding("risky", "estimate.memory_gb", round(need, 1), "-",
                    f"the estimate ({need:.0f} GB per process) exceeds this machine's {have:.0f} GB {where}.",
                    "LoRA (use_peft: true), gradient_checkpointing: true, a smaller per_device_train_batch_size or "
                    "max_length, or ZeRO-3 over several processes (accelerate_configs/zero3.yaml).")]


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _duration(low: float, high: float) -> str:
    """'2.8-3.6 s', '12-15 min': both ends in the unit that suits the larger."""
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800), ("days", 86400, math.inf)):
        if high < limit:
            lo, hi = low / size, high / size
            digits = 0 if hi >= 10 else 1
            return f"{lo:.{digits}f}-{hi:.{digits}f} {unit}"
    return "?"


def table(e: dict, s) -> str:
    """The estimate on one screen."""
    m = s.model_args
    reference = {"none": "none (the loss needs no reference model)",
                 "adapter": "the base with the LoRA adapter disabled: a forward per step, no extra weights",
                 "copy": "a second copy of the model, loaded by TRL: a forward per step",
                 "precomputed": "precomputed by TRL before step 1: a forward over every pair, none per step"}
    reference = reference[e["reference"]]
    if s.trainer == "dpo" and s.recipe_args.reference_cache and e["reference"] in ("adapter", "copy"):
        reference += "; cached per pair (later epochs and runs skip it)"
    rows = [("model", e["model"] + (f" ({_count(e['params'])} parameters, config.json on the meta device)"
                                    if "params" in e else f": {e['model_problem'] or 'unknown'}"))]
    if "params" in e:
        lora = f"LoRA r={m.lora_r} on {m.lora_target_modules}" if s.peft else "every weight"
        if e["adapted_layers"] < e["layers"]:
            lora += f" of the top {e['adapted_layers']} of {e['layers']} layers"
        share = 100 * e["trainable_params"] / e["params"]
        share = f"{share:.0f}" if share >= 10 else f"{share:.2g}"
        rows.append(("trainable", f"{_count(e['trainable_params'])} ({share}%), {lora}"))
    rows.append(("reference", reference))
    per = s.args
    tokens = f", ~{_count(e['tokens_per_step'])} token positions/step" if e["tokens_per_step"] else ""
    where = ("from the data" if (s.data or {}).get("positions") else
             f"upper bound: rows of max_length {e['max_length']}" if e["max_length"] else "max_length unset: unbounded")
    rows.append(("batch", f"{e['per_step']} {e['unit']}/step per process ({per.per_device_train_batch_size} x "
                          f"{per.gradient_accumulation_steps} accumulation){tokens} ({where})"))
    rows.append(("precision", f"{e['precision']}, {e['weight_dtype']} weights"
                              + (", gradient checkpointing" if e["gradient_checkpointing"] else "")))
    lines = [textwrap.fill(f"{k:10} {v}", 119, subsequent_indent=" " * 11) for k, v in rows]
    if "memory_gb" in e:
        g = e["memory_gb"]
        parts = "  ".join(f"{k} {g[k]:.2f}" for k in ("weights", "reference", "gradients", "optimizer", "activations")
                          if g[k] >= 0.005)
        base = f" (+~{CPU_PROCESS_BASELINE_GB:.0f} GB process baseline on a CPU)" if s.on_cpu else ""
        lines.append(textwrap.fill(f"{'memory':10} ~{g['total']:.1f} GB per process{base}: {parts} GB", 119,
                                   subsequent_indent=" " * 11))
    if "seconds_per_step" in e:
        fast, slow = e["seconds_per_step"]
        run = f"; {e['steps']} steps: {_duration(*e['run_seconds'])}" if "run_seconds" in e else ""
        lines.append(textwrap.fill(f"{'time':10} {_duration(fast, slow)} per step{run} ({e['tflop_per_step']:.3g} "
                                   f"TFLOP/step at 31-40% of a {e['matmul_gflops']:.0f} GFLOP/s {e['probe']} matmul "
                                   "probe)", 119, subsequent_indent=" " * 11))
    elif "tflop_per_step" in e:
        lines.append(f"{'compute':10} {e['tflop_per_step']:.3g} TFLOP per step")
    lines.append("(an order of magnitude: matmul FLOPs over a measured rate, memory by formula; "
                 "see dpo_recipes/check/estimate.py)")
    return "\n".join(lines)
