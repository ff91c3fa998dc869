"""The loss hooks' data and refusals: the per-pair columns they read (ODPO's scores, the anchor flags), the collator
that carries them into each batch, and the settings each hook cannot honour, refused in one line before any model
work (`run.checks`) and again by the trainer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from dpo_recipes.errors import DPORecipesError

LOSS_HOOKS = ("odpo", "rdpo")
SCORE_COLUMNS = ("score_chosen", "score_rejected")
ROW_COLUMNS = (*SCORE_COLUMNS, "anchor")  # per-pair values the hooks read; never model inputs
ANCHOR_REFERENCE = "_anchor_reference_token_logps"  # the cached reference per token on chosen rows, in a batch
BATCH_ONLY = (*ROW_COLUMNS, ANCHOR_REFERENCE)  # keys the loss reads from a batch and TRL must not pass to the model


class ScoreCollator:
    """Wrap a preference collator so each batch also carries `score_chosen`/`score_rejected` (float64, [batch]) and
    `anchor` (bool, [batch]) where the dataset has them.

    TRL's `DataCollatorForPreference` builds only token tensors and ignores every other column.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        for column in SCORE_COLUMNS:
            if column in examples[0]:
                batch[column] = torch.tensor([float(example[column]) for example in examples], dtype=torch.float64)
        if "anchor" in examples[0]:
            batch["anchor"] = torch.tensor([bool(example["anchor"]) for example in examples])
        return batch


def check_anchor_config(anchor_coef: float, train_dataset, precompute_ref_log_probs: bool = False) -> None:
    """Refuse an anchor term that cannot work: a negative weight, a precomputed reference (totals only), or training
    data with no pair marked `anchor` (the term would silently be zero)."""
    if anchor_coef < 0 or not math.isfinite(anchor_coef):
        raise DPORecipesError(f"anchor_coef={anchor_coef!r}: use a weight >= 0 (0 turns the anchor term off).")
    if precompute_ref_log_probs:
        raise DPORecipesError(f"anchor_coef={anchor_coef:g} compares the model with the reference token by token, but "
                              "precompute_ref_log_probs keeps only each answer's total; set precompute_ref_log_probs: "
                              "false, or anchor_coef: 0.")
    if train_dataset is None:
        return
    columns = getattr(train_dataset, "column_names", None) or []
    if "anchor" not in columns or not any(train_dataset["anchor"]):
        raise DPORecipesError(
            f"anchor_coef={anchor_coef:g} needs pairs marked as anchors, but "
            + ("no training pair has anchor: true" if "anchor" in columns else "the training data has no 'anchor' "
               "column")
            + ". Mark the pairs whose chosen side is a general answer to keep (anchor: true), or set anchor_coef: 0.")


def check_hook_config(loss_hook: str, args) -> None:
    """Refuse the DPOConfig settings the hook cannot honour, with what to change."""
    loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    if "sigmoid" not in loss_types:
        raise DPORecipesError(
            f"loss_hook={loss_hook!r} replaces TRL's 'sigmoid' term, but loss_type={loss_types} has none. Add "
            "'sigmoid' to loss_type (e.g. loss_type: [sigmoid, sft]) or unset loss_hook to use TRL's loss as is.")
    if loss_types.count("sigmoid") > 1:
        raise DPORecipesError(f"loss_type={loss_types} lists 'sigmoid' twice; list it once with a weight instead.")
    problems = {
        "use_liger_kernel": (getattr(args, "use_liger_kernel", False),
                             "Liger replaces the model's forward and LM head, so the hook cannot read the per-token "
                             "log-probs it needs. Set use_liger_kernel: false."),
        "ld_alpha": (getattr(args, "ld_alpha", None) is not None,
                     "LD-DPO reweights the log-probs by length itself; combine it with loss_hook is not supported. "
                     "Unset ld_alpha (for length control, rdpo is the hook for it)."),
        "use_weighting": (getattr(args, "use_weighting", False),
                          "WPO weights are applied inside TRL's loss loop and would not reach the hook's term. "
                          "Set use_weighting: false."),
        "f_divergence_type": (getattr(args, "f_divergence_type", "reverse_kl") != "reverse_kl",
                              "the hooks are defined for DPO's reverse-KL log-ratio. Use f_divergence_type: "
                              "reverse_kl."),
        "padding_free": (getattr(args, "padding_free", False),
                         "the hook reads completion lengths from the padded batch. Set padding_free: false."),
    }
    for field, (bad, why) in problems.items():
        if bad:
            raise DPORecipesError(f"loss_hook={loss_hook!r} cannot be combined with {field}={getattr(args, field)!r}: "
                                  f"{why}")


def check_hook_scores(dataset, name: str, ratio: bool) -> None:
    """ODPO needs a numeric score pair per row with s_w > s_l (and both > 0 for the ratio form)."""
    if dataset is None:
        return
    columns = dataset.column_names or list(next(iter(dataset)).keys())
    missing = [c for c in SCORE_COLUMNS if c not in columns]
    if missing:
        raise DPORecipesError(
            f"loss_hook='odpo' needs the column(s) {missing} in {name} (found {sorted(columns)}). Give each pair the "
            "scores of its chosen and rejected answer (e.g. reward-model or rating values), or use loss_hook='rdpo' "
            "or plain DPO.")
    if not hasattr(dataset, "__len__"):  # an IterableDataset: checked batch by batch would cost a pass; trust it
        return
    rule = "score_chosen > score_rejected > 0" if ratio else "score_chosen > score_rejected"
    bad = []
    for i, (s_w, s_l) in enumerate(zip(dataset["score_chosen"], dataset["score_rejected"])):
        ok = (s_w is not None and s_l is not None and math.isfinite(s_w) and math.isfinite(s_l) and s_w > s_l
              and (not ratio or s_l > 0))
        if not ok:
            bad.append((i, s_w, s_l))
    if bad:
        shown = ", ".join(f"row {i}: ({s_w}, {s_l})" for i, s_w, s_l in bad[:3])
        raise DPORecipesError(
            f"loss_hook='odpo' needs {rule} in every row ({'log(s_w / s_l)' if ratio else 'log(s_w - s_l)'} is "
            f"undefined otherwise); {len(bad)} of {len(dataset)} rows in {name} break it, e.g. {shown}. Drop ties and "
            "inverted pairs before training, or swap chosen/rejected where the scores disagree with the label.")
