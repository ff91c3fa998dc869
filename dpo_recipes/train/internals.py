"""Every private TRL / transformers name the project reads or patches, in one place: what it is, the versions it was
checked against, and what happens when it is missing.

The rule: a missing internal turns its lever off with one warning, or refuses in one line; it never gives a silently
different result. Where a moved internal *could* change results without an error, the use site checks the behaviour
itself on the run's first batch (see `train.trainer`: the loss list the hooks swap is verified against the loss
TRL computed, the speed levers' log-probs against TRL's own path). `tests/test_internals.py` fails when any name below
is gone from the installed versions, so a version bump shows what moved before a user does.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CHECKED = "trl 1.16.0; transformers 5.23.0-5.25.0"


@dataclass(frozen=True)
class Internal:
    """One private name: `where` is a module ('trl.trainer.utils') or a class ('trl:DPOTrainer'); `instance` names an
    attribute set in the class's __init__ (checked on a built trainer, not on the class)."""

    where: str
    name: str
    used_for: str
    if_missing: str
    instance: bool = False

    def owner(self):
        module, _, cls = self.where.partition(":")
        owner = importlib.import_module(module)
        return getattr(owner, cls) if cls else owner

    def present(self, obj=None) -> bool:
        return hasattr(obj if obj is not None else self.owner(), self.name)


INTERNALS = (
    Internal("trl.trainer.utils", "_use_triton", "the fused LM head scores only completion positions on a CPU too "
             "(trainer.score_completion_tokens_only)", "the lever stays off, with one warning: speed only"),
    Internal("trl.data_utils", "_tokenize", "token counts for validation (data.lengths) and `dpo-recipes show` "
             "(data.export), tokenized exactly as TRL does", "an ImportError naming the function"),
    Internal("trl:DPOTrainer", "_prepare_dataset", "`dpo-recipes show` renders pairs as TRL tokenizes them; the "
             "trainer skips it for pairs validation already tokenized (train.pretokenized, checked on the first row "
             "against it)", "`show` fails with an AttributeError naming it; the trainer's override is never called, "
             "so TRL tokenizes again (slower)"),
    Internal("trl:DPOTrainer", "loss_types", "the loss hooks and the anchor term take `sigmoid`/`sft` out of TRL's "
             "sum for one call", "RecipeDPOTrainer refuses a hook in one line; the swap is also verified against the "
             "loss TRL computed on the first batch", instance=True),
    Internal("trl:DPOTrainer", "loss_weights", "as loss_types", "as loss_types", instance=True),
    Internal("trl:DPOTrainer", "precompute_ref_logps", "the reference cache hands its values to TRL's loss as a "
             "precomputed batch", "the reference cache turns off with one warning", instance=True),
    Internal("trl:DPOTrainer", "_is_vision_dataset", "vision data: no packing, no hooks, no reference cache",
             "treated as vision (all three off), with one warning", instance=True),
    Internal("trl:DPOTrainer", "_metrics", "the hooks' own metrics (odpo/*, rdpo/*, anchor/*) next to TRL's",
             "those metrics are not logged, with one warning", instance=True),
    Internal("transformers:Trainer", "_get_train_sampler", "group_by_length over TRL's tokenized pairs",
             "Trainer's own sampler (speed only)"),
    Internal("transformers:Trainer", "_get_eval_sampler", "as _get_train_sampler", "as _get_train_sampler"),
    Internal("transformers:Trainer", "_set_signature_columns_if_needed", "score and anchor columns survive TRL's "
             "column pruning", "the hooks refuse: their columns never reach a batch (DPORecipesError at the first "
             "batch)"),
    Internal("transformers:Trainer", "_save_checkpoint", "the reference cache is saved with every checkpoint",
             "the cache is saved when training ends only"),
    Internal("transformers:Trainer", "_load_from_checkpoint", "a run stopped after its last step finishes from its "
             "checkpoint without training", "that rerun fails with an AttributeError naming it"),
    Internal("transformers.trainer_optimizer", "_BITSANDBYTES_OPTIMIZERS", "pre-flight: an 8-bit optimizer without "
             "bitsandbytes installed", "that pre-flight check is skipped"),
)


def missing(trainer=None) -> list[Internal]:
    """The internals gone from the installed versions (instance attributes only when a trainer is given)."""
    gone = []
    for internal in INTERNALS:
        if internal.instance and trainer is None:
            continue
        try:
            present = internal.present(trainer if internal.instance else None)
        except (ImportError, AttributeError):
            present = False
        if not present:
            gone.append(internal)
    return gone


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One warning per process for a lever that turned itself off."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)
