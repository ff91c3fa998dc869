"""The reference model's log-probs, computed once per pair and kept on disk for later epochs and later runs.

DPO's reference is frozen, so its summed log-probs for a pair never change for a given model, precision and token
sequence. TRL can precompute them for the whole dataset before training (`precompute_ref_log_probs`), but that
forward runs over every pair even when `max_steps` trains on a few, and its cache keys on the dataset's fingerprint,
which is random for data built in memory, so a second run computes it all again.

This cache fills as training goes instead: a batch whose pairs are all known skips the reference forward; otherwise
TRL's own `compute_ref_log_probs` runs on the batch and its values are kept. So the first epoch of the first run costs
what TRL's per-step reference costs, and every later epoch, and every later run on the same pairs with the same model
(a beta or learning-rate sweep, a resumed run, a second seed), skips the reference forward.

For the anchor term (`RecipeDPOTrainer.anchor_coef`), which reads the reference per token on an anchor's chosen
answer, the cache also keeps those per-token values for anchor pairs (a few dozen floats each); a batch is served from
the cache only when every anchor in it has them.

A pair's key is the sha256 of the token ids and completion positions of its two rows as the trainer sees them, after
the chat template and `max_length` truncation, so a change of data, template or `max_length` misses the cache by
construction. The file's key (`reference_key`) covers the reference weights (the base without the LoRA adapter
when the adapter is disabled for the reference), the precision, TRL's `ld_alpha` and the TRL version.
Files are written whole and atomically (`<dir>/<key>/<random>.safetensors`), one per writer, so runs sharing a
cache never corrupt it: the worst a race costs is a recomputation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import uuid
from collections.abc import Collection
from pathlib import Path

import torch

from dpo_recipes.jsonio import write_file_atomic
from dpo_recipes.models import default_cache_dir

CACHE_ENV = "DPO_RECIPES_REFERENCE_CACHE"


def default_dir() -> Path:
    """`$DPO_RECIPES_REFERENCE_CACHE`, else `reference-logps` in the project's cache folder (`models.default_cache_dir`:
    `$DPO_RECIPES_CACHE`, `$XDG_CACHE_HOME/dpo-recipes` or `~/.cache/dpo-recipes`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return default_cache_dir() / "reference-logps"


MAX_SHARDS = 16  # more files than this are merged into one when the cache is saved


def reference_key(model, *, leave_out: Collection[str] = (), precision: str, ld_alpha: float | None) -> str:
    """Hex key for the reference's log-probs: its weights, the precision it runs in, LD-DPO's alpha (which weights the
    tail of the log-probs), and the TRL version (which computes them). `leave_out`: state-dict names that are not part
    of the reference (the trained adapter, when the reference is the model with it switched off: `trained_adapter`)."""
    import transformers
    import trl

    h = hashlib.sha256()
    h.update(f"{precision}|{ld_alpha}|trl {trl.__version__}|transformers {transformers.__version__}".encode())
    config = getattr(model, "config", None)
    if config is not None:  # RoPE scaling, softcapping, logit scale, attention implementation: not in the weights
        h.update(config.to_json_string(use_diff=False).encode())
        h.update(str(getattr(config, "_attn_implementation", None)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name in leave_out:
            continue
        # PEFT renames the layers it wraps: the same base weights get the same key whatever the LoRA targets.
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def trained_adapter(model) -> set[str] | None:
    """The state-dict names of the adapter a PEFT model trains, for a reference that is the model with it switched off.

    The adapter is the one PEFT reports active (`active_adapters`), whatever its name; every frozen tensor stays in the
    key, so a frozen copy TRL keeps as the reference (TRL 1.16 names it "ref") is keyed by its own weights under any
    name. None when anything else trains (a bias): the reference would drift with it."""
    active = list(getattr(model, "active_adapters", None) or [])
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    adapter = {name for name in trained if any(f".{a}." in name or name.endswith(f".{a}") for a in active)}
    return adapter if adapter and adapter == trained else None


def pair_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> list[bytes]:
    """One key per pair of TRL's `[chosen; rejected]` batch: the real tokens of both rows and where each completion
    starts and ends."""
    pairs = input_ids.size(0) // 2
    ids, mask, completion = input_ids.cpu(), attention_mask.cpu().bool(), completion_mask.cpu().bool()
    keys = []
    for i in range(pairs):
        h = hashlib.sha256()
        for row in (i, i + pairs):
            h.update(ids[row][mask[row]].to(torch.int64).numpy().tobytes())
            h.update(b"|")
            h.update(completion[row][mask[row]].numpy().tobytes())
            h.update(b"||")
        keys.append(h.digest())
    return keys


class ReferenceCache:
    """Pair key -> (reference chosen log-prob, reference rejected log-prob), and for anchor pairs pair key -> the
    reference's per-token log-probs on the chosen answer's tokens, loaded from and saved to `directory`."""

    def __init__(self, directory: str | Path, key: str):
        self.directory = Path(directory).expanduser() / key
        self.values: dict[bytes, tuple[float, float]] = {}
        self.new: dict[bytes, tuple[float, float]] = {}
        self.tokens: dict[bytes, torch.Tensor] = {}
        self.new_tokens: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self._load()

    def _shards(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.safetensors")) if self.directory.is_dir() else []
        except OSError:  # an unreadable folder: an empty cache
            return []

    def _load(self) -> None:
        from safetensors.torch import load_file

        for shard in self._shards():
            try:
                tensors = load_file(shard)
            except Exception:  # a shard another writer is replacing, or a damaged file: recompute those pairs
                continue
            keys, logps = tensors["keys"], tensors["logps"]
            for key, (chosen, rejected) in zip(keys, logps.tolist()):
                self.values[bytes(key.tolist())] = (chosen, rejected)
            if "token_keys" in tensors:  # per-token values of anchor pairs, concatenated
                ends = tensors["token_lengths"].cumsum(0).tolist()
                for key, start, end in zip(tensors["token_keys"], [0, *ends[:-1]], ends):
                    self.tokens[bytes(key.tolist())] = tensors["token_logps"][start:end].clone()

    def lookup(self, keys: list[bytes], token_keys: list[bytes] = ()
               ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None:
        """The cached (chosen, rejected) log-probs for every pair of a batch (float64) and the per-token values of
        the pairs in `token_keys`, or None if any is missing. Counts nothing: the caller decides whether the batch is
        served from the cache (`served`) or computed (`store`)."""
        found = [self.values.get(k) for k in keys]
        tokens = [self.tokens.get(k) for k in token_keys]
        if any(v is None for v in found) or any(t is None for t in tokens):
            return None
        values = torch.tensor(found, dtype=torch.float64)
        return values[:, 0], values[:, 1], tokens

    def served(self, keys: list[bytes]) -> None:
        """Count a batch whose reference values came from the cache."""
        self.hits += len(keys)

    def store(self, keys: list[bytes], chosen: torch.Tensor, rejected: torch.Tensor,
              tokens: dict[bytes, torch.Tensor] | None = None) -> None:
        """Count a computed batch and keep its finite values (and the per-token values in `tokens`, by pair key): a
        NaN reference is a fault of that run, never a value for the next one."""
        self.misses += len(keys)
        for key, c, r in zip(keys, chosen.detach().double().cpu().tolist(), rejected.detach().double().cpu().tolist()):
            if math.isfinite(c) and math.isfinite(r):
                self.values[key] = self.new[key] = (c, r)
        for key, values in (tokens or {}).items():
            values = values.detach().float().cpu()
            if bool(torch.isfinite(values).all()):
                self.tokens[key] = self.new_tokens[key] = values

    def save(self) -> Path | None:
        """Write the pairs computed since the last save as a new shard (merging the shards when there are many).
        A cache that cannot be written (a read-only home, a full disk) costs a warning, never the run."""
        if not self.new and not self.new_tokens:
            return None
        try:
            return self._save()
        except OSError as exc:
            logging.getLogger(__name__).warning("Reference cache %s not written (%s); training is unaffected, a "
                                                "later run computes these reference values again.", self.directory,
                                                exc.strerror or exc)
            self.new, self.new_tokens = {}, {}
            return None

    def _save(self) -> Path:
        from safetensors.torch import save_file

        shards = self._shards()
        merge = len(shards) + 1 > MAX_SHARDS
        entries = self.values if merge else self.new
        token_entries = self.tokens if merge else self.new_tokens
        tensors = {"keys": torch.tensor([list(k) for k in entries], dtype=torch.uint8).reshape(-1, 32),
                   "logps": torch.tensor(list(entries.values()), dtype=torch.float64).reshape(-1, 2)}
        if token_entries:
            tensors["token_keys"] = torch.tensor([list(k) for k in token_entries], dtype=torch.uint8)
            tensors["token_lengths"] = torch.tensor([len(v) for v in token_entries.values()], dtype=torch.int64)
            tensors["token_logps"] = torch.cat(list(token_entries.values())).contiguous()
        path = write_file_atomic(self.directory / f"{uuid.uuid4().hex}.safetensors",
                                 lambda tmp: save_file(tensors, tmp))
        if merge:
            for shard in shards:
                shard.unlink(missing_ok=True)
        self.new, self.new_tokens = {}, {}
        return path
