"""A `DPOTrainer` subclass that applies the loss hooks TRL lacks (see `dpo_recipes.losses`).

With `loss_hook=None` and `share_prompts=False` it is exactly TRL's `DPOTrainer`. `share_prompts` (on by default) runs
each pair's prompt through the model once (`dpo_recipes.shared_prompt`): the same numbers to float rounding, for less
compute. `reference_cache` keeps the reference's log-probs per pair on disk (`dpo_recipes.reference_cache`).

How a hook is applied, without copying TRL's 300-line `_compute_loss`:

1. TRL computes everything it normally does (policy forward, reference log-probs, the other loss terms such as
   `sft`, and all `rewards/*`, `logps/*`, `logits/*` metrics), with its own `sigmoid` term left out of the sum.
2. While it runs, forward hooks record the per-token log-probs the fused LM head returns for the policy and (when not
   precomputed) the reference. From them the hook builds the same summed log-probs TRL uses, in the same order.
3. The hook's per-pair loss (ODPO or R-DPO) replaces the sigmoid term, with the sigmoid's weight.

So with alpha = 0 the result is TRL's sigmoid loss bit for bit (tested), and every other TRL loss type in the list
passes through untouched. ODPO's scores travel as `score_chosen`/`score_rejected` columns: they are kept through
TRL's column pruning and added to each batch by a wrapper around the collator. R-DPO's lengths are the number of
completion tokens in each sequence, read from the batch's `completion_mask`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.internals import missing as internals_missing
from dpo_recipes.internals import warn_once
from dpo_recipes.lever_check import levers_agree
from dpo_recipes.losses import anchor_k2, dpo_logratio, odpo_loss, odpo_offset, rdpo_length_margin, rdpo_loss
from dpo_recipes.nonfinite import NonFiniteGuard
from dpo_recipes.shared_prompt import install as install_shared_prompt
from dpo_recipes.shared_prompt import shared_prompts

logger = logging.getLogger(__name__)

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


def score_completion_tokens_only() -> None:
    """Make TRL 1.16's fused LM head score only the completion positions on a CPU too, as it does on CUDA.

    TRL projects every position to the vocabulary on devices without Triton (to keep tile shapes fixed for compilers
    such as Neuron's), then zeroes the prompt positions: on a CPU that is pure waste, about 56M multiply-adds per
    prompt token in each forward and backward for a 49k vocabulary. The log-probs of the completion positions are
    computed by the same code either way (tested equal, and checked on each run's first batch: `lever_check`), so this
    changes speed and memory, never a result. Without TRL's private `_use_triton` (`internals`) it stays off.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        warn_once("_use_triton", "trl.trainer.utils._use_triton is gone from this TRL version: the fused LM head "
                  "scores every position on a CPU (slower, same results).")
        return
    if getattr(original, "_dpo_recipes", False):
        return

    def compact(device: torch.device) -> bool:
        return original(device) or device.type == "cpu"

    compact._dpo_recipes = True
    compact.original = original
    trl_utils._use_triton = compact


@contextlib.contextmanager
def full_lm_head():
    """TRL's own fused LM head during the block (the compact one undone), for the levers' self-check."""
    import trl.trainer.utils as trl_utils

    current = getattr(trl_utils, "_use_triton", None)
    original = getattr(current, "original", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = original
    try:
        yield
    finally:
        trl_utils._use_triton = current


def drop_compact_lm_head() -> None:
    import trl.trainer.utils as trl_utils

    original = getattr(getattr(trl_utils, "_use_triton", None), "original", None)
    if original is not None:
        trl_utils._use_triton = original


def pair_lengths(dataset, max_length: int | None = None, shared_prompt: bool = False) -> list[int]:
    """Tokens a tokenized pair pads to: its prompt plus its longer answer (each row capped at max_length), or with
    shared prompts its one packed row: the prompt once plus both answers."""
    cap = max_length or float("inf")
    lengths = []
    for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
        chosen, rejected = min(len(p) + len(c), cap), min(len(p) + len(r), cap)
        lengths.append(int(chosen + rejected - min(len(p), cap) if shared_prompt else max(chosen, rejected)))
    return lengths


class RecipeDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer plus optional ODPO / R-DPO loss hooks chosen by the recipe config.

    Args:
        loss_hook: None (plain TRL), "odpo" (needs `score_chosen`/`score_rejected` columns) or "rdpo".
        odpo_alpha: ODPO offset scale alpha; the offset is alpha * log(s_w - s_l). Paper default 1.0.
        odpo_ratio: use log(s_w / s_l) as the offset instead (scores must then be positive).
        rdpo_alpha: R-DPO length coefficient per completion token, added as alpha * (|y_w| - |y_l|) to the logit.
        anchor_coef: weight of the anchor term (0: off). Pairs marked `anchor` in the dataset hold a general answer
            the model must keep as its chosen side (the base model's own answer); the term adds, per anchor pair, the
            mean over its chosen tokens of 1/2 (log pi - log pi_ref)^2 (`losses.anchor_k2`, an estimate of the KL to
            the reference there), averaged over the batch's anchor pairs. It holds the model to the reference on
            general prompts while DPO moves it on the rest. Needs the reference per token: refused with
            `precompute_ref_log_probs` (totals only); the `reference_cache` keeps the anchors' per-token values.
            Works with or without a
            `loss_hook`. TRL's `sft` term (when in `loss_type`) then covers the non-anchor pairs only: on an anchor
            it would sharpen the model on its own general answer, a drift of its own.
        reference_cache: a folder for the reference's log-probs per pair (`dpo_recipes.reference_cache`): later
            epochs and later runs on the same pairs and model skip the reference forward. None: TRL's behaviour.
        share_prompts: run each pair's shared prompt through the model once (`dpo_recipes.shared_prompt`: the same
            log-probs for less compute) where the model allows it; False runs TRL's two rows per pair.
        *args, **kwargs: passed to `trl.DPOTrainer` unchanged.

    The hook replaces the `sigmoid` entry of `args.loss_type` (keeping its weight in `args.loss_weights`); other
    entries, e.g. `sft`, are added as TRL computes them. Metrics logged next to TRL's: `odpo/offset` (mean alpha *
    log-gap), `odpo/accuracy` (share of pairs with beta * h above their offset), `rdpo/length_diff` (mean
    |y_w| - |y_l|, tokens), `rdpo/length_margin` (mean alpha * (|y_w| - |y_l|)), and `<hook>/loss`. With anchors:
    `anchor/k2` (the term before its weight, per anchor pair) and `anchor/logratio` (mean log pi - log pi_ref per anchor
    token: below 0 when the model moves away from the general answers).
    """

    def __init__(self, *args, loss_hook: str | None = None, odpo_alpha: float = 1.0, odpo_ratio: bool = False,
                 rdpo_alpha: float = 0.0, share_prompts: bool = True, reference_cache: str | None = None,
                 anchor_coef: float = 0.0, **kwargs):
        if loss_hook not in (None, *LOSS_HOOKS):
            raise DPORecipesError(f"loss_hook={loss_hook!r} is not a hook; use one of {list(LOSS_HOOKS)} or leave it "
                                  "unset for TRL's own loss types.")
        self.loss_hook = loss_hook
        self.odpo_alpha = odpo_alpha
        self.odpo_ratio = odpo_ratio
        self.rdpo_alpha = rdpo_alpha
        self.anchor_coef = float(anchor_coef)
        # DPOTrainer's positional order: model, ref_model, args, data_collator, train_dataset, eval_dataset, ...
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if self.anchor_coef:
            check_anchor_config(self.anchor_coef, kwargs.get("train_dataset", args[4] if len(args) > 4 else None),
                                precompute_ref_log_probs=bool(getattr(config, "precompute_ref_log_probs", False)))
        if loss_hook is not None:
            if config is not None:
                check_hook_config(loss_hook, config)
            if loss_hook == "odpo":
                train_dataset = kwargs.get("train_dataset", args[4] if len(args) > 4 else None)
                check_hook_scores(train_dataset, "train_dataset", odpo_ratio)
                eval_dataset = kwargs.get("eval_dataset", args[5] if len(args) > 5 else None)
                for name, dataset in (eval_dataset.items() if isinstance(eval_dataset, dict)
                                      else [("eval_dataset", eval_dataset)]):
                    check_hook_scores(dataset, name, odpo_ratio)
        self._levers_checked = self._swap_verified = False
        self.lever_check = None
        score_completion_tokens_only()
        # Installed on a model object before TRL's constructor, so a reference precomputation there shares too.
        model = kwargs.get("model", args[0] if args else None)
        self._shared_prompt_wrappers = _shared_prompt_wrappers([model]) if share_prompts else []
        super().__init__(*args, **kwargs)
        reference_cache = self._check_internals(reference_cache)
        sharing = share_prompts and not self._is_vision_dataset and not getattr(self.args, "use_liger_kernel", False)
        self._shared_prompt_wrappers = _shared_prompt_wrappers([self.model, self.ref_model], self.accelerator) \
            if sharing else []
        if loss_hook is not None:
            check_hook_config(loss_hook, self.args)  # args may have been None above: TRL built a default
            if self._is_vision_dataset:
                raise DPORecipesError("loss_hook works on text preference data only; this dataset has images.")
        if self.anchor_coef and self._is_vision_dataset:
            raise DPORecipesError(f"anchor_coef={self.anchor_coef:g}: this dataset has images; anchors work on text "
                                  "only.")
        if loss_hook == "odpo" or self.anchor_coef:
            self.data_collator = ScoreCollator(self.data_collator)
        self.reference_cache = self._open_reference_cache(reference_cache) if reference_cache else None
        self.nonfinite_guard = NonFiniteGuard.attach(self)  # a NaN/inf loss or gradient never reaches the weights

    def _check_internals(self, reference_cache: str | None) -> str | None:
        """TRL's private attributes this trainer reads (`internals`): refuse, or turn the lever off with a warning.
        Returns the reference cache folder still usable (None: off)."""
        gone = {internal.name for internal in internals_missing(self) if internal.instance}
        if gone & {"loss_types", "loss_weights"} and (self.loss_hook or self.anchor_coef):
            raise DPORecipesError(f"This TRL ({_trl_version()}) has no DPOTrainer.loss_types/loss_weights: loss_hook "
                                  "and anchor_coef cannot take a term out of its loss. Use TRL 1.16, or unset both.")
        if "_is_vision_dataset" in gone:
            warn_once("_is_vision_dataset", "DPOTrainer._is_vision_dataset is gone from this TRL version: the data is "
                      "treated as images (no shared prompts, no reference cache, no hooks).")
            self._is_vision_dataset = True
        if "precompute_ref_logps" in gone:
            if reference_cache:
                warn_once("precompute_ref_logps", "DPOTrainer.precompute_ref_logps is gone from this TRL version: the "
                          "reference cache is off (the reference forward runs every step).")
            self.precompute_ref_logps = False  # only our code reads it now: TRL computes the reference every step
            return None
        return reference_cache

    # --- batches of pairs of similar length: less padding to compute ------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        """`train_sampling_strategy: group_by_length` for preference pairs. Transformers looks for `input_ids`, which
        TRL's tokenized pairs do not have; a pair's length here is its prompt plus its longer answer, what the
        collator pads the batch to."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = self._length_grouped(dataset, self.args.train_batch_size * self.args.gradient_accumulation_steps)
        if sampler is None and self._unmeasurable(dataset):
            return torch.utils.data.RandomSampler(dataset)  # what TRL's DPOTrainer samples with by default
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        """The held-out pairs grouped by length too (Trainer's own grouping would fail as for training)."""
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        sampler = self._length_grouped(eval_dataset, self.args.eval_batch_size, torch.Generator().manual_seed(seed))
        if sampler is None and self._unmeasurable(eval_dataset):
            return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
        return sampler if sampler is not None else super()._get_eval_sampler(eval_dataset)

    def _unmeasurable(self, dataset) -> bool:
        """Whether group_by_length is asked for on rows this trainer cannot measure (TRL's vision path keeps images
        and text untokenized until the collator; Trainer's own grouping raises on them): warns once, and the caller
        then samples as TRL's DPOTrainer does by default."""
        columns = getattr(dataset, "column_names", None) or []
        if (self.args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "__len__")
                or "prompt_ids" in columns or self.args.length_column_name in columns):
            return False
        if not getattr(self, "_warned_unmeasurable", False):
            self._warned_unmeasurable = True
            logger.warning("train_sampling_strategy group_by_length: these rows are not tokenized before batching "
                           "(%s), so their lengths are unknown; sampling at random instead, as TRL's DPOTrainer does.",
                           "images" if self._is_vision_dataset else "no prompt_ids column")
        return True

    def _length_grouped(self, dataset, batch_size: int, generator=None):
        """A LengthGroupedSampler over TRL's tokenized pairs, or None when grouping is off or the data untokenized."""
        columns = getattr(dataset, "column_names", None) or []
        if self.args.train_sampling_strategy != "group_by_length" or "prompt_ids" not in columns:
            return None
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = pair_lengths(dataset, self.args.max_length, shared_prompt=bool(self._shared_prompt_wrappers))
        return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)

    # --- carrying the scores through TRL's data path ---------------------------------------------------------------
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.loss_hook == "odpo":
            self._signature_columns = [*self._signature_columns, *SCORE_COLUMNS]
        if self.anchor_coef:
            self._signature_columns = [*self._signature_columns, "anchor"]

    def compute_ref_log_probs(self, model, inputs):
        # TRL passes every non-token key of the batch to the model; the scores and anchor flags are not model inputs.
        with self._sharing_prompts():
            return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in BATCH_ONLY})

    @contextlib.contextmanager
    def _sharing_prompts(self):
        """Every backbone forward in the block runs each pair's shared prompt once (where installed)."""
        with contextlib.ExitStack() as stack:
            for wrapper in self._shared_prompt_wrappers:
                stack.enter_context(shared_prompts(wrapper))
            yield

    def shared_prompt_tokens(self) -> tuple[int, int]:
        """(tokens in TRL's two-row layout, tokens the model actually ran) over the packed forwards so far."""
        wrappers = self._shared_prompt_wrappers
        return sum(w.tokens_before for w in wrappers), sum(w.tokens_after for w in wrappers)

    # --- the loss ----------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._levers_checked and model.training:
            self._check_levers(model, inputs)
        with self._sharing_prompts():
            if self.reference_cache is None or self.precompute_ref_logps:
                return self._compute_loss_with_hook(model, inputs, return_outputs, num_items_in_batch)
            inputs = self._with_reference_log_probs(model, inputs)
            self.precompute_ref_logps = True  # TRL's loss then reads the reference from the batch
            try:
                return self._compute_loss_with_hook(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self.precompute_ref_logps = False

    def _check_levers(self, model, inputs: dict[str, Any]) -> None:
        """Once per run: the speed levers' log-probs on this batch against TRL's own (`lever_check`); off if apart."""
        self._levers_checked = True
        import trl.trainer.utils as trl_utils

        levers = (["shared-prompt packing"] if self._shared_prompt_wrappers else []) + \
            (["the compact LM head"] if hasattr(getattr(trl_utils, "_use_triton", None), "original") else [])
        if not levers:
            return
        batch = {k: v for k, v in inputs.items() if k not in BATCH_ONLY}
        agree, difference = levers_agree(self, model, batch, self._sharing_prompts, full_lm_head)
        self.lever_check = {"levers": levers, "mean_abs_difference_per_token": difference, "kept": agree}
        if agree:
            return
        logger.warning("%s gave log-probs %.3g nats per completion token away from TRL's own computation on the first "
                       "batch: turned off for this run (TRL's results at TRL's speed). Please report it with your TRL "
                       "and transformers versions.", " and ".join(levers), difference)
        self._shared_prompt_wrappers = []
        drop_compact_lm_head()

    def _verify_term_swap(self, loss, replaced: list[str], records, inputs: dict[str, Any]) -> None:
        """Once per run: TRL's loss with `replaced` taken out of `loss_types` (`_without_terms`) must hold none of them.
        TRL 1.16 sums the terms in `self.loss_types` (`internals`); if a TRL read them from elsewhere, sigmoid would
        count twice, silently. Checked exactly where the kept terms are known: none kept (the loss is 0), or `sft`
        alone (minus the mean chosen-token log-prob, from the recorded forward)."""
        self._swap_verified = True
        kept = [t for t in self.loss_types if t not in replaced]
        if self.aux_loss_enabled or kept not in ([], ["sft"]):
            warn_once("term swap", f"loss_type {self.loss_types}: with {kept} next to the hook's terms the loss TRL "
                      "computed cannot be checked for the terms the hook replaces (checked for [sigmoid] and "
                      "[sigmoid, sft]); relying on TRL 1.16 summing DPOTrainer.loss_types.")
            return
        expected = torch.zeros(())
        if kept == ["sft"]:
            policy, _ = self._token_log_probs(records, inputs)
            mask = inputs["completion_mask"][..., 1:].chunk(2, dim=0)[0].bool()
            expected = -policy.chunk(2, dim=0)[0][mask].mean() * self.loss_weights[self.loss_types.index("sft")]
        actual = torch.as_tensor(loss).detach().float().cpu()
        if not torch.allclose(actual, expected.detach().float().cpu(), rtol=1e-3, atol=1e-4):
            raise DPORecipesError(
                f"This TRL ({_trl_version()}) computed a DPO loss of {float(actual):.6g} with {replaced} taken out of "
                f"DPOTrainer.loss_types, where {float(expected):.6g} was expected: it no longer sums the terms listed "
                "there, so the hook's term would be counted twice. Use TRL 1.16, or unset loss_hook and anchor_coef.")

    # --- the reference's log-probs, cached per pair -----------------------------------------------------------------
    def _open_reference_cache(self, directory: str):
        """The cache for this reference, or None where its weights cannot be read whole here (ZeRO-3, FSDP), where
        TRL precomputes the reference anyway, or for images."""
        from dpo_recipes.reference_cache import ReferenceCache, reference_key, trained_adapter

        if (self.precompute_ref_logps or self._is_vision_dataset or self.is_fsdp_enabled
                or getattr(self.args, "sync_ref_model", False)):  # a reference that changes has no stable key
            return None
        reference = self.accelerator.unwrap_model(self.ref_model or self.model)
        if any(p.numel() == 0 for p in reference.parameters()):  # ZeRO-3 partitioned: no honest key
            return None
        leave_out: set[str] = set()
        if self.ref_model is None and is_peft_model(reference):  # the reference is this model, trained adapter off
            leave_out = trained_adapter(reference)
            if leave_out is None:
                return None  # base parameters train next to the adapter (a bias): the reference drifts
        precision = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else str(next(reference.parameters()).dtype)
        key = reference_key(reference, leave_out=leave_out, precision=precision, ld_alpha=self.ld_alpha)
        return ReferenceCache(directory, key)

    def _with_reference_log_probs(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch with `ref_chosen_logps`/`ref_rejected_logps`: from the cache, or computed by TRL and kept. With
        the anchor term, also `ANCHOR_REFERENCE`: the reference's per-token log-probs on the chosen rows (zero off the
        anchors' answer tokens), aligned as `_token_log_probs` aligns the policy's."""
        from dpo_recipes.reference_cache import pair_keys

        cache = self.reference_cache
        device = inputs["input_ids"].device
        keys = pair_keys(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        anchors = inputs.get("anchor") if self.anchor_coef else None
        rows = [] if anchors is None else [i for i, is_anchor in enumerate(anchors.tolist()) if is_anchor]
        chosen_mask = inputs["completion_mask"][..., 1:].chunk(2, dim=0)[0].bool()
        cached = cache.lookup(keys, [keys[i] for i in rows])
        if self.accelerator.num_processes > 1:  # all processes run the reference forward, or none (DDP collectives)
            if not bool(self.accelerator.gather(torch.tensor([cached is not None], device=device)).all()):
                cached = None
        if cached is None:
            reference_model = self.ref_model or model
            with self._record_log_probs(reference_model, tag_all="reference") as records:
                chosen, rejected = self.compute_ref_log_probs(reference_model, inputs)
            tokens = {}
            if rows:
                per_token = self._reference_token_log_probs(records, inputs).chunk(2, dim=0)[0]
                tokens = {keys[i]: per_token[i][chosen_mask[i]] for i in rows}
            cache.store(keys, chosen, rejected, tokens)
            token_values = [tokens[keys[i]] for i in rows]
        else:
            chosen, rejected, token_values = cached
            cache.served(keys)
        inputs = {**inputs, "ref_chosen_logps": chosen.to(device, torch.float32),
                  "ref_rejected_logps": rejected.to(device, torch.float32)}
        if anchors is not None:
            reference = torch.zeros(chosen_mask.shape, dtype=torch.float32, device=device)
            for i, values in zip(rows, token_values):
                reference[i, chosen_mask[i]] = values.to(device, torch.float32)
            inputs[ANCHOR_REFERENCE] = reference
        return inputs

    def _reference_token_log_probs(self, records: list[tuple[str, torch.Tensor]],
                                   inputs: dict[str, Any]) -> torch.Tensor:
        """The one reference forward's per-token log-probs, aligned as TRL aligns them in `compute_ref_log_probs`."""
        return _aligned(records, inputs, 1, "DPOTrainer.compute_ref_log_probs")[0]

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.reference_cache is not None:
            self.reference_cache.save()

    def train(self, *args, **kwargs):
        """TRL's training; raises DPORecipesError (`NonFiniteGuard.report`) when a step's loss or gradients were not
        finite: that update was skipped and training stopped there."""
        try:
            result = super().train(*args, **kwargs)
        finally:
            if self.reference_cache is not None:
                self.reference_cache.save()
        if self.nonfinite_guard.tripped is not None:
            raise DPORecipesError(self.nonfinite_guard.report())
        return result

    def _compute_loss_with_hook(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = {k: inputs[k] for k in SCORE_COLUMNS if k in inputs}
        anchors = inputs.get("anchor")
        cached_reference = inputs.get(ANCHOR_REFERENCE)
        inputs = {k: v for k, v in inputs.items() if k not in BATCH_ONLY}
        if self.loss_hook is None and not self.anchor_coef:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        replaced = ["sigmoid"] if self.loss_hook else []
        if self.anchor_coef and "sft" in self.loss_types:
            replaced.append("sft")  # taken over the non-anchor pairs below
        with self._record_log_probs(model) as records, self._without_terms(replaced):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        if replaced and not self._swap_verified:
            self._verify_term_swap(loss, replaced, records, inputs)

        if self.loss_hook is not None:
            hook_loss = self._hook_loss(records, inputs, scores)
            loss = loss + hook_loss.mean() * self.loss_weights[self.loss_types.index("sigmoid")]
        if self.anchor_coef:
            loss = loss + self.anchor_coef * self._anchor_loss(records, inputs, anchors, cached_reference)
            if "sft" in replaced:
                loss = loss + self.loss_weights[self.loss_types.index("sft")] * self._sft_without_anchors(
                    records, inputs, anchors)
        return (loss, outputs) if return_outputs else loss

    def _sft_without_anchors(self, records, inputs: dict[str, Any], anchors: torch.Tensor) -> torch.Tensor:
        """TRL's `sft` term (minus the mean log-prob over the batch's chosen tokens) over the non-anchor pairs only.

        On an anchor, SFT would raise the likelihood of the model's own answer: it sharpens the model on general
        prompts, the very drift the anchor term holds back (and long general answers would outweigh the short
        identity answers in TRL's per-token mean). 0 for a batch of anchors only."""
        policy, _ = self._token_log_probs(records, inputs)
        chosen_mask = inputs["completion_mask"][..., 1:].chunk(2, dim=0)[0].bool()
        keep = chosen_mask & ~anchors.to(chosen_mask.device)[:, None]
        chosen = policy.chunk(2, dim=0)[0]
        return -chosen[keep].mean() if bool(keep.any()) else chosen.sum() * 0.0

    def _anchor_loss(self, records: list[tuple[str, torch.Tensor]], inputs: dict[str, Any],
                     anchors: torch.Tensor | None, cached_reference: torch.Tensor | None = None) -> torch.Tensor:
        """The anchor term: `anchor_k2` on the chosen side of the batch's anchor pairs, averaged over those pairs.
        The reference per token comes from this step's reference forward, or from the reference cache
        (`cached_reference`, chosen rows) when the cache served the batch."""
        if anchors is None:
            raise DPORecipesError("anchor_coef is set but this batch has no 'anchor' flags: the dataset lacks the "
                                  "column (e.g. one passed to evaluate() later), or a custom data_collator dropped it.")
        policy, reference = self._token_log_probs(records, inputs)
        mask = inputs["completion_mask"][..., 1:]
        chosen_mask = mask.chunk(2, dim=0)[0]
        policy_chosen = policy.chunk(2, dim=0)[0]
        reference_chosen = reference.chunk(2, dim=0)[0] if reference is not None else cached_reference
        if reference_chosen is None:
            raise RuntimeError("the anchor term has no reference log-probs for this batch")
        k2 = anchor_k2(policy_chosen, reference_chosen, chosen_mask)
        weights = anchors.to(k2.device, k2.dtype)
        loss = (k2 * weights).sum() / weights.sum().clamp_min(1)
        mode = "train" if self.model.training else "eval"
        if bool(anchors.any()):
            with torch.no_grad():
                tokens = (chosen_mask * weights[:, None]).sum()
                logratio = ((policy_chosen - reference_chosen) * chosen_mask * weights[:, None]).sum() / tokens
            self._log_hook_metric(mode, "anchor/k2", loss.detach().reshape(1))
            self._log_hook_metric(mode, "anchor/logratio", logratio.reshape(1))
        return loss

    def _token_log_probs(self, records: list[tuple[str, torch.Tensor]],
                         inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs of the policy and of the reference (None when precomputed), `[2 * batch, tokens]`
        (chosen rows first), aligned with `completion_mask[..., 1:]` as TRL aligns them."""
        aligned = _aligned(records, inputs, 1 if self.precompute_ref_logps else 2, "DPOTrainer._compute_loss")
        return aligned[0], aligned[1] if len(aligned) == 2 else None

    def _hook_loss(self, records: list[tuple[str, torch.Tensor]], inputs: dict[str, Any],
                   scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hook's per-pair loss from the recorded per-token log-probs, summed as TRL sums them."""
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        policy, reference = self._token_log_probs(records, inputs)
        chosen_logps, rejected_logps = policy.sum(dim=1).chunk(2, dim=0)
        if reference is None:  # precomputed: TRL's batch holds the totals
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = reference.sum(dim=1).chunk(2, dim=0)
        logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)

        if self.loss_hook == "odpo":
            missing = [c for c in SCORE_COLUMNS if c not in scores]
            if missing:
                raise DPORecipesError(
                    f"loss_hook='odpo' needs {missing} in every batch, but this batch has none: the dataset lacks "
                    "the columns (e.g. a dataset passed to evaluate() later), or a custom data_collator dropped "
                    "them. Add the score columns, and use the default collator or wrap yours in "
                    "dpo_recipes.trainer.ScoreCollator.")
            s_w, s_l = scores["score_chosen"], scores["score_rejected"]
            losses = odpo_loss(*logps, s_w, s_l, beta=self.beta, alpha=self.odpo_alpha, ratio=self.odpo_ratio)
            with torch.no_grad():
                offset = odpo_offset(s_w, s_l, alpha=self.odpo_alpha, ratio=self.odpo_ratio)
                above = (self.beta * dpo_logratio(*logps).double() > offset).float()
            self._log_hook_metric(mode, "odpo/offset", offset)
            self._log_hook_metric(mode, "odpo/accuracy", above)
        else:
            chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
            chosen_lengths, rejected_lengths = chosen_mask.sum(dim=1), rejected_mask.sum(dim=1)
            losses = rdpo_loss(*logps, chosen_lengths, rejected_lengths, beta=self.beta, alpha=self.rdpo_alpha)
            length_diff = (chosen_lengths - rejected_lengths).double()
            self._log_hook_metric(mode, "rdpo/length_diff", length_diff)
            self._log_hook_metric(mode, "rdpo/length_margin", rdpo_length_margin(chosen_lengths.double(),
                                                                                 rejected_lengths.double(),
                                                                                 alpha=self.rdpo_alpha))
        self._log_hook_metric(mode, f"{self.loss_hook}/loss", losses.detach())
        return losses

    def _log_hook_metric(self, mode: str, name: str, values: torch.Tensor) -> None:
        values = values.detach().to(self.accelerator.device, torch.float32)
        metrics = getattr(self, "_metrics", None)  # TRL's private metric store (`internals`)
        if metrics is None:
            warn_once("_metrics", "DPOTrainer._metrics is gone from this TRL version: the hooks' own metrics "
                      "(odpo/*, rdpo/*, anchor/*) are not logged.")
            return
        metrics[mode][name].append(self.accelerator.gather(values).mean().item())

    @contextlib.contextmanager
    def _without_terms(self, names: list[str]):
        """Let TRL compute every loss term except `names` (`sigmoid` when a hook replaces it, `sft` with anchors)."""
        loss_types, loss_weights = self.loss_types, self.loss_weights
        kept = [i for i, name in enumerate(loss_types) if name not in names]
        self.loss_types = [loss_types[i] for i in kept]
        self.loss_weights = [loss_weights[i] for i in kept]
        try:
            yield
        finally:
            self.loss_types, self.loss_weights = loss_types, loss_weights

    @contextlib.contextmanager
    def _record_log_probs(self, model, tag_all: str | None = None):
        """Record `log_probs` of every fused-LM-head forward of the policy (and reference model) during the block.

        The hooks sit on the causal LM that TRL patched with `add_fused_lm_head`, beneath any PEFT, DDP or DeepSpeed
        wrapper, so they see the policy forward and, with PEFT, the adapter-disabled reference forward, in call order.
        `tag_all`: record only `model`'s forwards, under that tag (the reference forward of `compute_ref_log_probs`).
        """
        records: list[tuple[str, torch.Tensor]] = []

        def hook_for(tag):
            def hook(module, args, kwargs, output):
                if kwargs.get("fused_lm_head"):
                    records.append((tag, output.log_probs))
            return hook

        policy = self.accelerator.unwrap_model(model)
        policy = policy.get_base_model() if is_peft_model(policy) else policy
        handles = [policy.register_forward_hook(hook_for(tag_all or "policy"), with_kwargs=True)]
        if self.ref_model is not None and not self.precompute_ref_logps and tag_all is None:
            reference = self.accelerator.unwrap_model(self.ref_model)
            handles.append(reference.register_forward_hook(hook_for("reference"), with_kwargs=True))
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()


def _aligned(records: list[tuple[str, torch.Tensor]], inputs: dict[str, Any], expected: int,
             where: str) -> list[torch.Tensor]:
    """The recorded fused-head forwards' per-token log-probs, each aligned with `completion_mask[..., 1:]` as TRL
    aligns them (prompt-learning PEFT prepends virtual tokens); `expected` forwards, or this TRL computes otherwise."""
    if len(records) != expected:
        raise RuntimeError(f"expected {expected} fused forward(s) in {where}, saw {len(records)}; this TRL version "
                           "computes the loss differently than TRL 1.16.")
    seq_len = inputs["completion_mask"].size(1) - 1
    return [log_probs[:, -seq_len:] for _, log_probs in records]


def _shared_prompt_wrappers(models: list, accelerator=None) -> list:
    """The shared-prompt wrappers installed on these models (unwrapped from DDP/DeepSpeed and PEFT down to the
    causal LM TRL gave its fused LM head); models it cannot apply to, and names not yet loaded, get none."""
    wrappers = []
    for model in models:
        if not isinstance(model, torch.nn.Module):
            continue
        model = accelerator.unwrap_model(model) if accelerator is not None else model
        wrapper = install_shared_prompt(model.get_base_model() if is_peft_model(model) else model)
        if wrapper is not None:
            wrappers.append(wrapper)
    return wrappers


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


def _trl_version() -> str:
    import trl

    return f"trl {trl.__version__}"
