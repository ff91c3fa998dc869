"""W&B set-up: offline without a key or a reachable server (never waiting on the network), run names and tags, no
secret logged, the code's git commit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from dpo_recipes.watch.tracking import prepare_wandb, redact, run_name_and_tags, source_revision, wandb_requested

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_wandb_env(monkeypatch, tmp_path):
    """No W&B variables and no ~/.netrc key; restored after the test (prepare_wandb sets some)."""
    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT", "WANDB_INIT_TIMEOUT"):
        monkeypatch.setenv(name, "x")  # registered for restore...
        monkeypatch.delenv(name)       # ...then unset for the test
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_wandb_is_offline_without_a_key(clean_wandb_env, tmp_path):
    assert prepare_wandb(["wandb"], str(tmp_path)) == "offline"
    assert os.environ["WANDB_DIR"] == str(tmp_path)


def test_a_key_with_an_unreachable_server_goes_offline_within_seconds(clean_wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.perf_counter()
    assert prepare_wandb("wandb", str(tmp_path)) == "offline"
    assert time.perf_counter() - start < 5


def test_the_users_wandb_mode_wins(clean_wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert prepare_wandb(["wandb"], str(tmp_path)) == "disabled"


def test_wandb_only_when_asked(clean_wandb_env, tmp_path):
    assert prepare_wandb(["none"], str(tmp_path)) is None
    assert "WANDB_MODE" not in os.environ
    assert wandb_requested("all") and wandb_requested(["tensorboard", "wandb"]) and not wandb_requested([])


def test_secrets_are_redacted_and_other_values_kept():
    values = redact({"hub_token": "hf_abc", "wandb_api_key": "k", "hub_model_id": "me/model", "push_to_hub_token": None,
                     "learning_rate": 1e-4, "pad_token": "<pad>", "eval_max_new_tokens": 64,
                     "average_tokens_across_devices": True})
    assert values == {"hub_token": "<redacted>", "wandb_api_key": "<redacted>", "hub_model_id": "me/model",
                      "push_to_hub_token": None, "learning_rate": 1e-4, "pad_token": "<pad>",
                      "eval_max_new_tokens": 64, "average_tokens_across_devices": True}


def test_run_name_and_tags_come_from_recipe_preset_model_and_date():
    class Args:
        run_name = None
        loss_type = ["sigmoid", "sft"]

    name, tags = run_name_and_tags("dpo_lora", "identity-lora-cpu", "embedded:/cache/SmolLM2-135M-Instruct", Args(),
                                   loss_hook="odpo", use_peft=True)
    assert name.startswith("dpo_lora-SmolLM2-135M-Instruct-identity-lora-cpu-20")
    assert tags == ["dpo_lora", "SmolLM2-135M-Instruct", "preset:identity-lora-cpu", "lora", "loss:sigmoid", "loss:sft",
                    "hook:odpo"]
    Args.run_name = "mine"
    assert run_name_and_tags("dpo_lora", None, "m", Args())[0] == "mine"


def test_source_revision_is_this_checkouts_commit():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_revision()["git_commit"] == head


def test_nested_tokens_and_credential_text_are_redacted():
    from dpo_recipes.watch.tracking import redact_argv

    assert redact({"model_init_kwargs": {"token": "hf_abcdefgh123", "revision": "main"}, "note": "key hf_abcdefgh123"}) \
        == {"model_init_kwargs": {"token": "<redacted>", "revision": "main"}, "note": "key <redacted>"}
    argv = ["--hub_token", "hf_CLISECRET456", "--hub-token=abc", "--model_init_kwargs", '{"token": "hf_NESTED7890"}',
            "--learning_rate", "1e-4"]
    redacted = redact_argv(argv)
    assert "hf_CLISECRET456" not in str(redacted) and "abc" not in str(redacted) and "hf_NESTED7890" not in str(redacted)
    assert redacted[-2:] == ["--learning_rate", "1e-4"]
