"""`make up`'s local defaults (scripts/stack.py): fast schedules and small release thresholds so the
stack is useful within minutes, each applied only when the user has not set it; a store path the
functions can use from inside their build folders; a generated release token in the stack's state."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from scripts.stack import LOCAL_DEFAULTS, ROOT, StackConfig, absolute_store_url, ensure_release_token


@pytest.fixture
def env_of(tmp_path, monkeypatch):
    """service_env() as `make up` computes it, with only `user_env` set by the user."""
    def compute(**user_env):
        for name in (*LOCAL_DEFAULTS, "STORE_URL"):
            monkeypatch.delenv(name, raising=False)
        for name, value in user_env.items():
            monkeypatch.setenv(name, value)
        return StackConfig.from_env(str(tmp_path / "state"), env=user_env).service_env()
    return compute


def test_local_defaults_give_fast_schedules_and_a_backfilled_simulator(env_of):
    env = env_of()
    for name, value in LOCAL_DEFAULTS.items():
        assert env[name] == value
    assert env["TRAIN_SCHEDULE"].startswith("@every") and env["RELEASE_SCHEDULE"] == "@every 15s"
    assert "--backfill" in env["SIMULATOR_ARGS"]


def test_a_value_the_user_set_wins_over_the_local_default_even_when_empty(env_of):
    env = env_of(TRAIN_SCHEDULE="0 3 * * *", SIMULATOR_ARGS="")
    assert env["TRAIN_SCHEDULE"] == "0 3 * * *" and env["SIMULATOR_ARGS"] == ""


def test_the_store_is_an_absolute_path_under_the_state_dir_by_default(env_of, tmp_path):
    assert env_of()["STORE_URL"] == str(tmp_path / "state" / "store")


def test_a_relative_store_path_is_made_absolute_against_the_repo_and_urls_pass_unchanged():
    assert absolute_store_url("var/store") == str(ROOT / "var" / "store")
    assert absolute_store_url("s3://movierec") == "s3://movierec"
    assert Path(absolute_store_url("/srv/store")).is_absolute()


def test_the_release_token_is_generated_once_random_and_private(tmp_path):
    path = ensure_release_token(tmp_path / "secrets")
    token = path.read_text().strip()
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_release_token(tmp_path / "secrets").read_text().strip() == token  # kept on the next `up`
    assert ensure_release_token(tmp_path / "other").read_text().strip() != token
