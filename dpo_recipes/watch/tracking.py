"""Run tracking: W&B (offline when there is no key), the local metrics file, and summary.json.

Nothing here prints or logs a secret: the W&B key is only tested for presence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
from importlib import metadata
from pathlib import Path

from dpo_recipes.jsonio import write_json_atomic, write_jsonl_atomic

logger = logging.getLogger(__name__)

TRACKED_PACKAGES = ("dpo-recipes", "torch", "trl", "transformers", "peft", "accelerate", "datasets")


WANDB_PROJECT = "dpo-recipes"  # W&B project when WANDB_PROJECT is unset
# Names whose values are never logged, at any depth (hub_token, model_init_kwargs' token; not pad_token), and text
# that looks like a Hugging Face or W&B credential wherever it appears.
SECRET_NAME = re.compile(r"^token$|(^|_)(hub|hf|auth|access|api|wandb|bearer)_token$|api_key$|secret|password",
                         re.IGNORECASE)
SECRET_TEXT = re.compile(r"\bhf_[A-Za-z0-9]{8,}|\b[0-9a-f]{40}\b|\b(local|wandb_v1)-[0-9a-f]{40,}")
REDACTED = "<redacted>"


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def server_answers(url: str, timeout: float = 3.0) -> bool:
    """Whether the server of `url` accepts a TCP connection within `timeout` seconds (no request is sent)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)),
                                      timeout):
            return True
    except OSError:
        return False


def wandb_requested(report_to: list[str] | str | None) -> bool:
    """Whether `report_to` asks for W&B (by name, or 'all')."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return "wandb" in targets or "all" in targets


def prepare_wandb(report_to: list[str] | str | None, output_dir: str) -> str | None:
    """Make W&B safe to use here, before anything starts it: runs go under OUTPUT_DIR/wandb, and offline when no
    key is configured or the server does not answer in 3 s (a run never waits on the network).

    Returns the W&B mode in effect, or None when W&B is not a `report_to` target. `WANDB_MODE` set by the user wins.
    W&B's own console chatter is silenced (WANDB_SILENT, unless set): the recipe prints one line on where the run
    is and, offline, the one `wandb sync` command that uploads it.
    """
    if not wandb_requested(report_to):
        return None
    if "WANDB_MODE" not in os.environ:
        if not _wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
        elif not server_answers(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
            os.environ["WANDB_MODE"] = "offline"
            logger.warning("W&B key found, but %s does not answer: logging offline instead.",
                           os.environ.get("WANDB_BASE_URL", "api.wandb.ai"))
    os.environ.setdefault("WANDB_DIR", output_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return os.environ.get("WANDB_MODE", "online")


def redact(values):
    """`values` (a dict, list or scalar, nested) with every set secret replaced by '<redacted>': values under a secret
    name (SECRET_NAME), and credential-like text (SECRET_TEXT) anywhere, also inside JSON strings."""
    if isinstance(values, dict):
        return {k: REDACTED if v not in (None, "") and isinstance(k, str) and SECRET_NAME.search(k) else redact(v)
                for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return type(values)(redact(v) for v in values)
    if isinstance(values, str):
        return SECRET_TEXT.sub(REDACTED, values)
    return values


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret flags (`--hub_token X`, `--hub-token=X`) and credential-like text in
    any argument (a JSON `{"token": ...}` too) replaced by '<redacted>'."""
    import json

    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--"):
            name, eq, _ = arg[2:].partition("=")
            if SECRET_NAME.search(name.replace("-", "_")):
                out.append(f"--{name}={REDACTED}" if eq else arg)
                hide_next = not eq
                continue
        if arg.lstrip().startswith("{"):
            try:
                arg = json.dumps(redact(json.loads(arg)))
            except ValueError:
                pass
        out.append(redact(arg))
    return out


@contextlib.contextmanager
def _argv_redacted():
    """sys.argv without secrets while W&B records the program's arguments (wandb.Settings reads sys.argv)."""
    import sys

    original = sys.argv
    sys.argv = [original[0], *redact_argv(original[1:])]
    try:
        yield
    finally:
        sys.argv = original


def source_revision() -> dict:
    """The git commit of the dpo-recipes checkout this code runs from, and whether it has local changes
    ({'git_commit': None} when it is an installed copy, not a checkout)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return {"git_commit": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def run_name_and_tags(recipe: str, preset: str | None, model_name: str, training_args, loss_hook=None,
                      use_peft: bool = False) -> tuple[str, list[str]]:
    """A W&B run name from recipe, model, preset and date ('dpo_lora-SmolLM2-135M-Instruct-identity-lora-cpu-
    20261123-1514'; `--run_name` wins), and tags for filtering runs."""
    import datetime

    model = Path(str(model_name).removeprefix("embedded:")).name or str(model_name)
    date = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    name = training_args.run_name or "-".join(p for p in (recipe, model, (preset or "").replace(",", "+"), date) if p)
    losses = getattr(training_args, "loss_type", None)
    tags = [recipe, model, *(f"preset:{p.strip()}" for p in (preset or "").split(",") if p.strip()),
            "lora" if use_peft else "full", *(f"loss:{t}" for t in (losses if isinstance(losses, list) else []))]
    if loss_hook:
        tags.append(f"hook:{loss_hook}")
    return name, [t[:64] for t in tags]  # W&B caps a tag at 64 characters


def start_wandb_run(recipe: str, recipe_args, training_args, model_args, record: dict, data_report,
                    resumed_from: str | None = None):
    """Start the W&B run of this training run (main process only; None when W&B is not requested).

    It is started here, not by transformers' WandbCallback, so that it carries the run name and tags, the full
    resolved config with where each value came from (`value_sources`: cli, yaml:PATH, preset:NAME, hardware,
    default), the data validation report, the data's fingerprint, the git commit and package versions. The callback
    then logs TRL's metrics into this same run. A resumed run (`resumed_from`, a checkpoint) is a new W&B run that
    says so in its config; its history starts at the checkpoint's step.
    """
    import dataclasses

    if not wandb_requested(training_args.report_to) or training_args.process_index != 0:
        return None
    import wandb

    name, tags = run_name_and_tags(recipe, recipe_args.preset, record["model"], training_args,
                                   getattr(recipe_args, "loss_hook", None), getattr(model_args, "use_peft", False))
    training_args.run_name = name  # what the WandbCallback reads
    config = {
        **redact(training_args.to_dict()),
        "model_args": redact({f.name: _loggable(getattr(model_args, f.name)) for f in dataclasses.fields(model_args)}),
        "recipe_args": redact({f.name: _loggable(getattr(recipe_args, f.name)) for f in dataclasses.fields(recipe_args)
                               if f.init}),
        "value_sources": getattr(recipe_args, "value_sources", {}),
        "dpo_recipes": {"recipe": recipe, "preset": recipe_args.preset, "model": record["model"],
                        "data_source": record["data"]["source"], "data_pairs": record["data"]["pairs"],
                        "data_sha256": record["data"]["sha256"], **source_revision(), "versions": package_versions(),
                        "resumed_from": resumed_from},
    }
    project = os.environ.get("WANDB_PROJECT", WANDB_PROJECT)
    training_args.project = project  # TrainingArguments' own 'project' (trackio's, default 'huggingface') in the config
    config["project"] = project
    with _argv_redacted():
        run = wandb.init(project=project, name=name, tags=tags, config=config, dir=training_args.output_dir,
                         job_type="train")
    report = data_report.to_dict()
    run.summary["data_report"] = {k: v for k, v in report.items() if k != "examples"}
    run.log({"data/dropped": wandb.Table(columns=["rule", "pairs"],
                                         data=[[rule, n] for rule, n in report.get("dropped", {}).items()])},
            commit=False)
    return run


def _loggable(value):
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_loggable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _loggable(v) for k, v in value.items()}
    return str(value)


def redacting_wandb_callback():
    """transformers' WandbCallback, logging the training arguments through `redact` (its own masking covers only
    top-level `*_token` names, not e.g. model_init_kwargs' token)."""
    from transformers.integrations import WandbCallback

    class RedactingWandbCallback(WandbCallback):
        def setup(self, args, state, model, **kwargs):
            to_dict = args.to_dict
            args.to_dict = lambda: redact(to_dict())  # what setup() puts into the run's config
            try:
                super().setup(args, state, model, **kwargs)
            finally:
                del args.to_dict

    return RedactingWandbCallback()


def wandb_alert(alarm: dict) -> None:
    """Send a health alarm to W&B as an alert (online runs email or Slack it per the user's W&B settings)."""
    import wandb

    if wandb.run is None:
        return
    try:
        wandb.alert(title=f"DPO health: {alarm['kind']}", text=alarm["message"][:1000],
                    level=wandb.AlertLevel.WARN)
    except Exception as exc:  # an alert that cannot be sent must not stop training
        logger.warning("W&B alert not sent: %s", exc)


def finish_wandb_run(summary: dict, before=None, after=None, alarms=(), plots=()) -> None:
    """Log the run's end artefacts into the W&B run and close it: the before/after held-out answers as a Table, the
    health alarms as a Table, the plots as images, summary.json's figures in the run summary. Then print where the
    run is and, for an offline run, the one `wandb sync` command that uploads it."""
    import wandb

    run = wandb.run
    if run is None:
        return
    logs = {}
    if before is not None and after is not None and before.prompts:
        rows = [[p["kind"], p["prompt"], before.answers[i], after.answers[i], i in after.leaks, i in after.degenerate]
                for i, p in enumerate(before.prompts)]
        logs["heldout/answers"] = wandb.Table(columns=["kind", "prompt", "before", "after", "leak", "degenerate"],
                                              data=rows)
    logs["health/alarms"] = wandb.Table(columns=["kind", "step", "message"],
                                        data=[[a["kind"], a["step"], a["message"]] for a in alarms])
    for path in plots:
        logs[f"plots/{Path(path).stem}"] = wandb.Image(str(path))
    run.log(logs)
    run.summary.update({f"run/{k}": _loggable(v) for k, v in summary.items()})
    offline = run.settings.mode == "offline" or getattr(run, "offline", False)
    run_dir = Path(run.dir).parent
    run.finish()
    if not offline:
        print(f"W&B run: {getattr(run, 'url', None) or run_dir}")
        return
    earlier = [d for d in sorted(run_dir.parent.glob("offline-run-*")) if d != run_dir]
    if earlier:  # a resumed run (or runs discarded by --overwrite_output_dir) left W&B runs of their own here
        print(f"W&B run logged offline in {run_dir}, next to {len(earlier)} earlier run(s) of this output folder "
              f"(before a resume or an --overwrite_output_dir); upload them all with: "
              f"wandb sync {run_dir.parent}/offline-run-*")
    else:
        print(f"W&B run logged offline in {run_dir}; upload it with: wandb sync {run_dir}")


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's result depends on, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_log_history(log_history: list[dict], output_dir: str | Path) -> Path:
    """Every logged step of TRL's metrics (loss, rewards/*, logps/*, ...) as OUTPUT_DIR/metrics.jsonl."""
    return write_jsonl_atomic(Path(output_dir) / "metrics.jsonl", log_history)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir` to resume from.

    Trainer writes `trainer_state.json` last, after the weights, optimizer, scheduler and RNG states, so a folder
    without a readable one was cut off by a kill while saving: it is skipped, with a warning, never loaded
    (transformers' `get_last_checkpoint` would take it for being the newest)."""
    import json
    import logging

    from transformers.trainer_utils import sort_checkpoints

    if not Path(output_dir).is_dir():
        return None
    for checkpoint in reversed(sort_checkpoints(str(output_dir))):  # newest first
        try:
            json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logging.getLogger(__name__).warning(
                "%s is incomplete (no readable trainer_state.json: the run was stopped while saving it); skipped, "
                "resuming from the checkpoint before it", checkpoint)
            continue
        return checkpoint
    return None


def checkpoint_step(checkpoint: str | None) -> int:
    """The global step a `checkpoint-N` folder was saved at (0 for no checkpoint)."""
    if not checkpoint:
        return 0
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def write_summary(output_dir: str | Path, summary: dict, before=None, after=None) -> Path:
    """OUTPUT_DIR/summary.json, plus the before/after answers as OUTPUT_DIR/eval_answers.jsonl."""
    answers = Path(output_dir) / "eval_answers.jsonl"
    if before is not None and after is not None and before.prompts:
        write_jsonl_atomic(answers, ({**p, "before": before.answers[i], "after": after.answers[i]}
                                     for i, p in enumerate(before.prompts)))
    elif answers.exists():  # an earlier run's answers: this run evaluated no prompts
        answers.unlink()
    return write_json_atomic(Path(output_dir) / "summary.json", summary)
