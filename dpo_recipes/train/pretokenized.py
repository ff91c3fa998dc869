"""Pairs the data layer already tokenized as TRL does (`dpo_recipes.data.lengths.trl_token_ids`): the trainer uses
those ids instead of tokenizing every pair a second time.

TRL 1.16's DPOTrainer tokenizes in `_prepare_dataset` whatever it is given. Validation has to tokenize the same way to
count truncation and the pairs TRL would drop, so a dataset that arrives with `prompt_ids` / `chosen_ids` /
`rejected_ids` skips TRL's pass. It is not taken on trust: its first row is tokenized again by TRL's own
`_prepare_dataset`, and any difference (another TRL, a processor instead of a tokenizer) sends the whole dataset
through TRL's tokenization with one warning. TRL's last step, dropping pairs whose prompt fills max_length with
keep_start truncation, is applied here the same way.
"""

from __future__ import annotations

import logging

from dpo_recipes.data.lengths import TOKEN_COLUMNS

logger = logging.getLogger(__name__)


def has_token_ids(dataset) -> bool:
    return all(name in (getattr(dataset, "column_names", None) or ()) for name in TOKEN_COLUMNS)


def prepare(trl_prepare, dataset, processing_class, args, name: str):
    """TRL's `_prepare_dataset` (`trl_prepare`), or, for a dataset that carries matching ids, the dataset itself."""
    if not has_token_ids(dataset) or len(dataset) == 0:
        return trl_prepare(dataset, processing_class, args, name)
    bare = dataset.remove_columns(list(TOKEN_COLUMNS))
    first = _quietly(trl_prepare, bare.select([0]), processing_class, args, name)
    theirs = {column: first[column][0] for column in TOKEN_COLUMNS} if len(first) else None
    ours = {column: dataset[0][column] for column in TOKEN_COLUMNS}
    if theirs != ours:
        logger.warning("The %s pairs' token ids from validation differ from TRL's tokenization of the first pair; TRL "
                       "tokenizes them again (slower, same training).", name)
        return trl_prepare(bare, processing_class, args, name)
    if args.max_length is not None and args.truncation_mode == "keep_start":  # as TRL's _prepare_dataset ends
        import pyarrow.compute as pc

        lengths = pc.list_value_length(dataset.with_format("arrow")["prompt_ids"]).to_pylist()
        too_long = [i for i, n in enumerate(lengths) if n >= args.max_length]
        if too_long:
            dataset = dataset.select([i for i, n in enumerate(lengths) if n < args.max_length])
    return dataset


def _quietly(function, *args):
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return function(*args)
    finally:
        if shown:
            datasets.enable_progress_bars()
