"""`RecipeDPOTrainer`: TRL's `DPOTrainer` plus the loss hooks TRL lacks (`hooks`, `hook_terms`, `losses`) and the speed
levers and guards around each step.

With `loss_hook=None` and `share_prompts=False` it is exactly TRL's `DPOTrainer`. `share_prompts` (on by default) runs
each pair's prompt through the model once (`shared_prompt`): the same numbers to float rounding, for less compute,
checked against TRL's own log-probs on each run's first batch (`lever_check`). `reference_cache` keeps the
reference's log-probs per pair on disk (`reference_cache`). A non-finite loss or gradient never reaches the weights
(`nonfinite`). So with alpha = 0 a hook's result is TRL's sigmoid loss bit for bit (tested), and every other TRL loss
type passes through untouched. ODPO's scores travel as `score_chosen`/`score_rejected` columns, kept through TRL's
column pruning and added to each batch by `hooks.ScoreCollator`; R-DPO's lengths are the completion tokens of each
sequence, read from the batch's `completion_mask`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.hook_terms import HookTerms, _aligned, _trl_version
from dpo_recipes.train.hooks import (
    ANCHOR_REFERENCE,
    BATCH_ONLY,
    LOSS_HOOKS,
    SCORE_COLUMNS,
    ScoreCollator,
    check_anchor_config,
    check_hook_config,
    check_hook_scores,
)
from dpo_recipes.train.internals import missing as internals_missing
from dpo_recipes.train.internals import warn_once
from dpo_recipes.train.lever_check import levers_agree
from dpo_recipes.train.lm_head import drop_compact_lm_head, full_lm_head, score_completion_tokens_only
from dpo_recipes.train.nonfinite import NonFiniteGuard
from dpo_recipes.train.reference_cache import ReferenceCache, pair_keys, reference_key, trained_adapter
from dpo_recipes.train import pretokenized
from dpo_recipes.train.shared_prompt import install as install_shared_prompt
from dpo_recipes.train.shared_prompt import shared_prompts

logger = logging.getLogger(__name__)
# TRL 1.16 reads `model.is_gradient_checkpointing` around every reference forward, and transformers 5 warns on each
# read: hundreds of identical lines per run about code that is not the user's.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def pair_lengths(dataset, max_length: int | None = None, shared_prompt: bool = False) -> list[int]:
    """Tokens a tokenized pair pads to: its prompt plus its longer answer (each row capped at max_length), or with
    shared prompts its one packed row: the prompt once plus both answers."""
    cap = max_length or float("inf")
    lengths = []
    for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
        chosen, rejected = min(len(p) + len(c), cap), min(len(p) + len(r), cap)
        lengths.append(int(chosen + rejected - min(len(p), cap) if shared_prompt else max(chosen, rejected)))
    return lengths


class RecipeDPOTrainer(HookTerms, DPOTrainer):
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
        reference_cache: a folder for the reference's log-probs per pair (`dpo_recipes.train.reference_cache`): later
            epochs and later runs on the same pairs and model skip the reference forward. None: TRL's behaviour.
        share_prompts: run each pair's shared prompt through the model once (`dpo_recipes.train.shared_prompt`: the same
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

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's tokenization, skipped for pairs validation already tokenized as TRL does (checked on the first row)."""
        return pretokenized.prepare(super()._prepare_dataset, dataset, processing_class, args, dataset_name)

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

    # --- the reference's log-probs, cached per pair -----------------------------------------------------------------
    def _open_reference_cache(self, directory: str):
        """The cache for this reference, or None where its weights cannot be read whole here (ZeRO-3, FSDP), where
        TRL precomputes the reference anyway, or for images."""
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
