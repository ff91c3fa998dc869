"""The speed levers that change how log-probs are computed check themselves once per run, on the run's first batch.

Two levers compute TRL's log-probs another way for speed: shared-prompt packing (`train.shared_prompt`) and the
compact fused LM head on CPUs (`trainer.score_completion_tokens_only`, through TRL's private `_use_triton`). Both are
tested equal to TRL's own path, but they rest on internals of TRL and transformers (`train.internals`) that can
move. So before the first training step the policy's log-probs of that batch are computed twice without gradients,
with the levers and without them (TRL's own path), and compared per completion token, in float32 when the weights are
float32 (a bf16/fp16 autocast run included), else at the weights' precision. Outside that precision's tolerance, the
levers turn themselves off for the rest of the run with one warning: slower, never different.

The check costs two forwards without gradients of one pair (the first of the first batch), once per run: a few
seconds at 1,000 tokens on a CPU, where the whole first batch of 4 long pairs took ~25 s.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")  # as TRL's DPOTrainer._compute_loss
# Mean |difference| per completion token, in nats, above which the levers are not the same computation. Packing in
# fp32 agrees to ~1e-6; low-precision matmuls over another layout differ by rounding (measured on the default run:
# 0.005 nats per token in bf16 on its first batch); a real fault (a leaking mask, a wrong position) moves tokens
# by tenths of a nat.
TOLERANCE = {"fp32": 1e-4, "low": 3e-2}


def completion_log_probs(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs on the completion tokens, the completion mask), computed as TRL 1.16's DPOTrainer does."""
    model_kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
    model_kwargs["use_cache"] = False
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    seq_len = completion_mask.size(1) - 1
    log_probs = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs[:, -seq_len:].float()
    mask = completion_mask[..., 1:].to(log_probs.dtype)
    return log_probs * mask, mask


def first_pair(batch: dict) -> dict:
    """The batch's first pair alone, in TRL 1.16's layout (chosen rows, then rejected rows), padding trimmed; the
    whole batch when a tensor's layout is not that one (it is then checked whole)."""
    ids = batch.get("input_ids")
    if not torch.is_tensor(ids) or ids.dim() != 2 or ids.size(0) % 2 or ids.size(0) == 2:
        return batch
    pairs, width = ids.size(0) // 2, ids.size(1)
    rows = torch.tensor([0, pairs], device=ids.device)
    out = {}
    for key, value in batch.items():
        if not torch.is_tensor(value) or value.dim() == 0:
            return batch
        if value.size(0) == 2 * pairs:
            out[key] = value.index_select(0, rows)
        elif value.size(0) == pairs:
            out[key] = value[:1]
        else:
            return batch
    if torch.is_tensor(out.get("attention_mask")) and out["attention_mask"].dim() == 2:
        used = int(out["attention_mask"].sum(-1).max())
        out = {k: v[:, :used] if v.dim() >= 2 and v.size(1) == width else v for k, v in out.items()}
    return out


def levers_agree(trainer, model, inputs: dict, levers_on, levers_off) -> tuple[bool, float]:
    """Whether the log-probs with the levers (`levers_on()`, a context manager) equal TRL's (`levers_off()`) on this
    batch's first pair, and the mean |difference| per completion token. Every process takes the same answer."""
    inputs = first_pair(inputs)
    args = trainer.args
    low = _low_precision(model)
    holder = None if low or getattr(trainer, "is_fsdp_enabled", False) else _autocast_holder(model)
    # float32 arithmetic: a run without autocast on float32 weights, or one whose autocast the check takes off
    exact = holder is not None or not (args.bf16 or args.fp16 or low)
    was_training = model.training
    model.eval()  # no dropout: two forwards of the same weights must agree
    try:
        with torch.no_grad(), _without_autocast(model, holder):
            with levers_on():
                fast, mask = completion_log_probs(model, inputs)
            with levers_off():
                plain, _ = completion_log_probs(model, inputs)
    finally:
        model.train(was_training)
    tokens = mask.sum().clamp_min(1)
    difference = ((fast - plain).abs().sum() / tokens).reshape(1)
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        difference = accelerator.reduce(difference, "max")
    difference = float(difference)
    return difference <= (TOLERANCE["fp32"] if exact else TOLERANCE["low"]), difference


def _low_precision(model) -> bool:
    """Whether any weight is not float32 (bf16 or fp16 weights, a 4-bit or 8-bit quantized base): the check then
    runs at the run's precision and allows its rounding."""
    return any(parameter.dtype != torch.float32 for parameter in model.parameters())


def _autocast_holder(model):
    """The module whose `forward` accelerate wrapped in its bf16/fp16 autocast (it keeps the unwrapped one as
    `_original_forward`): the model itself, or the module inside a DDP-style wrapper; None when there is none."""
    module = model
    while module is not None:
        if "_original_forward" in module.__dict__ and "forward" in module.__dict__:
            return module
        module = getattr(module, "module", None)
    return None


@contextlib.contextmanager
def _without_autocast(model, holder):
    """float32 weights checked in float32: without accelerate's autocast wrapper on `holder.forward` and without an
    enclosing `torch.autocast`. Under autocast the two layouts round differently: the default run's seed 2 measured
    0.036 nats/token on a short first pair, over the bf16 tolerance, and lost both levers (2.3x the training time);
    in float32 the same computation agrees to ~1e-6. `holder` None: the check runs as the run does."""
    if holder is None:
        yield
        return
    wrapped = holder.__dict__["forward"]
    holder.forward = holder.__dict__["_original_forward"]
    try:
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            yield
    finally:
        holder.forward = wrapped
