"""Each pair's prompt through the model once, not twice: the same log-probs for less compute.

TRL's DPO batch is `[chosen rows; rejected rows]`, each row `prompt + answer`, so every prompt token is run through
the model twice in the policy forward, twice in the backward and twice in the reference forward. On chat data with
long prompts (multi-turn HH, RAG) the prompt is most of the tokens.

While `shared_prompts(model)` is active, the model's backbone (the decoder stack under the LM head) runs each pair as
one row instead: the tokens both rows share from the start (the prompt, and any answer tokens that begin alike) once,
then the chosen tail, then the rejected tail. A 4D attention mask keeps the rejected tail from seeing the chosen tail,
and position ids restart the rejected tail where the shared part ends, so every token sees exactly the keys and
positions it sees in its own row. Packed pairs shorter than the batch's longest share a row where they fit in its
length (the mask keeps them apart), so the padding a batch of mixed lengths would carry is mostly not computed.
The hidden states are then gathered back into TRL's `[chosen; rejected]` layout,
so the LM head, the log-probs, the loss and all metrics are TRL's own code on the same values (equal to float
rounding: tested against the unshared forward, and the gradients too, which sum over both uses of a shared token).
With dropout on (TRL disables it by default), both answers see one dropout mask over the prompt instead of two.

It applies where that is exact: decoder-only models whose attention is full causal attention over position ids
(Llama, Mistral without a sliding window, Qwen2/3, Gemma, Phi-3, OLMo, Granite, SmolLM3, ...) with the `sdpa` or
`eager` attention implementation. Anything else (flash-attention kernels, sliding windows, MoE routers, multimodal
inputs, a batch that is not TRL's pair layout) runs the backbone unchanged.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import torch

# Model types whose decoder is plain causal self-attention over `position_ids` (rotary or learned), one layer type.
SUPPORTED_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo", "olmo2", "granite", "smollm3", "stablelm",
    "starcoder2", "phi", "gpt_neox", "glm", "helium", "cohere",
})
SUPPORTED_ATTENTION = ("sdpa", "eager")


def unsupported_reason(model) -> str | None:
    """Why the shared-prompt forward cannot run on `model` (a causal LM, unwrapped), or None when it can."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text_config is not config:
        return "multimodal models are not supported"
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one whose attention it knows to be plain causal attention"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    if len(set(getattr(config, "layer_types", None) or ["full_attention"])) > 1:
        return "the model mixes attention layer types"
    rope_type = (getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {})
    rope_type = rope_type.get("rope_type", rope_type.get("type")) if isinstance(rope_type, dict) else None
    if rope_type in ("dynamic", "longrope"):
        return f"{rope_type} RoPE scales its frequencies by the longest row, which packing changes"
    attention = getattr(config, "_attn_implementation", None)
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} takes no 4D mask (use sdpa or eager)"
    if _backbone(model) is None:
        return "the model's decoder stack was not found"
    return None


def _backbone(model):
    """The decoder stack a causal LM's forward (and TRL's fused LM head) calls: `model.base_model`."""
    backbone = getattr(model, "base_model", None)
    return backbone if backbone is not None and backbone is not model else None


@dataclass
class PackedPairs:
    """Pairs packed into rows, and how to put their hidden states back in the `[chosen; rejected]` layout."""

    input_ids: torch.Tensor       # (packed rows, packed length)
    position_ids: torch.Tensor    # (packed rows, packed length)
    attention_mask: torch.Tensor  # (packed rows, 1, packed length, packed length), True where a query may see a key
    row: torch.Tensor             # (2 * pairs, length): packed row of each original position
    column: torch.Tensor          # (2 * pairs, length): packed position of each original position


def share_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Which pairs share a packed row: first-fit decreasing into rows of `width` tokens (the batch's longest packed
    pair, so no row is longer, and no attention wider, than without sharing). Each row lists its pairs in batch
    order, and rows are ordered by their first pair: a batch in which nothing fits together keeps one pair a row."""
    rows: list[list[int]] = []
    filled: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, used in enumerate(filled) if used + lengths[i] <= width), len(rows))
        if r == len(rows):
            rows.append([])
            filled.append(0)
        rows[r].append(i)
        filled[r] += lengths[i]
    return sorted(sorted(row) for row in rows)


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedPairs | None:
    """Pack TRL's right-padded `[chosen; rejected]` batch (2 * pairs rows) into packed pairs, several to a row where
    they fit in the longest one's length (`share_rows`), or None when the batch is not in that layout (odd rows, left
    or inner padding). Pairs in one row never see each other: the mask is block-diagonal, and each pair's positions
    start at 0, so every token sees exactly the keys and positions it sees in its own row of TRL's layout, and the
    padding the batch's shorter pairs would carry is not computed."""
    rows, length = input_ids.shape
    if rows % 2 or attention_mask is None or attention_mask.shape != input_ids.shape:
        return None
    mask = attention_mask.bool()
    device = mask.device
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(length, device=device) < lengths[:, None]):
        return None  # only right padding: the real tokens must be a prefix of each row
    pairs = rows // 2
    chosen_len, rejected_len = lengths[:pairs], lengths[pairs:]
    both = torch.minimum(chosen_len, rejected_len)
    differs = (input_ids[:pairs] != input_ids[pairs:]) | (torch.arange(length, device=device) >= both[:, None])
    # The shared prefix ends at the first position where the rows differ (or where the shorter one ends).
    shared = torch.where(differs.any(dim=1), differs.int().argmax(dim=1), both)
    chosen_tail, rejected_tail = chosen_len - shared, rejected_len - shared
    packed_len = shared + chosen_tail + rejected_tail
    width = int(packed_len.max())

    # Each pair on its own first, over its packed positions j: the shared part, the chosen tail, the rejected tail.
    j = torch.arange(width, device=device)[None, :]
    in_pair = j < packed_len[:, None]
    in_rejected_tail = (j >= chosen_len[:, None]) & in_pair
    in_chosen_tail = (j >= shared[:, None]) & (j < chosen_len[:, None])
    positions = torch.where(in_rejected_tail, j - chosen_tail[:, None], j)
    # Which original (row, position) fills each packed position: the chosen row for the shared part and its tail,
    # the rejected row (shifted back over the chosen tail) for the rejected tail.
    pair = torch.arange(pairs, device=device)[:, None]
    source_row = torch.where(in_rejected_tail, pair + pairs, pair)
    source_col = torch.where(in_rejected_tail, j - chosen_tail[:, None], j).clamp(max=length - 1)

    # Then the pairs side by side in their packed rows: pair i starts at `offset[i]` in row `packed_row[i]`.
    packed_row, offset = [0] * pairs, [0] * pairs
    sizes = packed_len.tolist()
    grouping = share_rows(sizes, width)
    for r, members in enumerate(grouping):
        start = 0
        for i in members:
            packed_row[i], offset[i] = r, start
            start += sizes[i]
    packed_row = torch.tensor(packed_row, device=device)
    offset = torch.tensor(offset, device=device)
    at = (packed_row[:, None].expand(pairs, width)[in_pair], (offset[:, None] + j)[in_pair])

    def place(values: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((len(grouping), width), fill, dtype=values.dtype, device=device)
        out[at] = values[in_pair]
        return out

    # Padding (-1 owner) repeats some real token; it sees only itself, so no row of the mask is empty (no NaN).
    packed_ids = place(input_ids[source_row, source_col], int(input_ids[0, 0]))
    owner = place(pair.expand(pairs, width), -1)
    rejected_query, chosen_key = place(in_rejected_tail, False), place(in_chosen_tail, False)
    # Within one pair's segment, packed order is its own order: causal over the row's columns is causal over the pair.
    visible = ((owner[:, :, None] == owner[:, None, :]) & (owner >= 0)[:, None, :]
               & (j <= j.transpose(0, 1))[None]
               & ~(rejected_query[:, :, None] & chosen_key[:, None, :]))
    visible = visible | torch.eye(width, dtype=torch.bool, device=device)[None]

    # Back: original chosen position t is packed t; rejected position t is t below the shared prefix, else t + tail,
    # each from its pair's offset. Padding positions read some real token's state: TRL scores none of them.
    t = torch.arange(length, device=device)[None, :]
    within = torch.cat([t.expand(pairs, length), torch.where(t < shared[:, None], t, t + chosen_tail[:, None])])
    column = (offset.repeat(2)[:, None] + within).clamp(max=width - 1)
    row = packed_row.repeat(2)[:, None].expand(rows, length)
    return PackedPairs(packed_ids, place(positions, 0), visible[:, None], row, column)


def unpack_hidden(hidden: torch.Tensor, packed: PackedPairs) -> torch.Tensor:
    """(packed rows, packed length, d) hidden states -> (2 * pairs, length, d) in TRL's layout (padding positions get some
    real token's state; TRL scores none of them)."""
    return hidden[packed.row, packed.column]


def _attention_mask_for(model, visible: torch.Tensor) -> torch.Tensor:
    """sdpa takes the boolean mask; eager adds the mask to the scores, so it gets 0 / the weights' dtype minimum."""
    if model.config._attn_implementation == "sdpa":
        return visible
    dtype = model.get_input_embeddings().weight.dtype
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible,
                                                                                      torch.finfo(dtype).min)


# A KV cache holds keys and values per row and position, so a forward that passes or asks for one cannot be packed.
# transformers 5.24 renamed `past_key_values` to `cache` (the old name is deprecated until 5.40); both are refused,
# and so is any other keyword that names a cache. `use_cache=False` (TRL passes it) asks for none, so it packs.
CACHE_KWARGS = frozenset({"cache", "past_key_values", "past_key_value", "layer_past", "mems"})  # + "cache" in the name


def _passes_a_cache(kwargs) -> bool:
    return any(value is not None and value is not False
               for name, value in kwargs.items() if name in CACHE_KWARGS or "cache" in name)


class SharedPromptForward:
    """Wraps a causal LM's backbone forward; packs pairs only while `active`.

    The wrapper is found through the backbone itself (`_dpo_recipes_shared_prompt`) and calls the backbone class's
    own forward, so a deep copy of the model (a reference made with `copy.deepcopy`) runs its own weights."""

    def __init__(self, model):
        self.model = model
        self.active = False
        self.packed_batches = 0
        self.tokens_before = 0
        self.tokens_after = 0
        backbone = _backbone(model)

        def forward(backbone_self, *args, **kwargs):
            wrapper = backbone_self._dpo_recipes_shared_prompt
            original = type(backbone_self).forward.__get__(backbone_self)
            packed = None if args else wrapper._pack(kwargs)
            if packed is None:
                return original(*args, **kwargs)
            kwargs.pop("attention_mask", None)
            kwargs.pop("position_ids", None)
            kwargs["input_ids"] = packed.input_ids
            outputs = original(position_ids=packed.position_ids,
                               attention_mask=_attention_mask_for(wrapper.model, packed.attention_mask), **kwargs)
            outputs.last_hidden_state = unpack_hidden(outputs.last_hidden_state, packed)
            return outputs

        backbone.forward = types.MethodType(forward, backbone)
        backbone._dpo_recipes_shared_prompt = self

    def _pack(self, kwargs) -> PackedPairs | None:
        input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if not self.active or input_ids is None or input_ids.dim() != 2:
            return None
        # Anything that depends on the row layout, or that asks for per-position outputs, runs unshared.
        layout_kwargs = ("position_ids", "inputs_embeds", "token_type_ids")
        if any(kwargs.get(k) is not None for k in layout_kwargs) or _passes_a_cache(kwargs):
            return None
        if any(kwargs.get(k) for k in ("output_attentions", "output_hidden_states", "output_router_logits")):
            return None
        packed = pack_pairs(input_ids, attention_mask)
        if packed is not None:
            self.packed_batches += 1
            self.tokens_before += int(input_ids.numel())
            self.tokens_after += int(packed.input_ids.numel())
        return packed


def install(model) -> SharedPromptForward | None:
    """Install the (inactive) shared-prompt wrapper on `model`'s backbone, or return None where it cannot apply.
    `model` is the causal LM itself (beneath PEFT / DDP wrappers). Installing twice returns the first wrapper."""
    if unsupported_reason(model) is not None:
        return None
    existing = getattr(_backbone(model), "_dpo_recipes_shared_prompt", None)
    return existing if existing is not None else SharedPromptForward(model)


@contextlib.contextmanager
def shared_prompts(wrapper: SharedPromptForward | None):
    """Pack pairs in every backbone forward during the block (a no-op for None)."""
    if wrapper is None:
        yield
        return
    previous, wrapper.active = wrapper.active, True
    try:
        yield
    finally:
        wrapper.active = previous
