"""`make up`'s local defaults (env/local.yml, applied by scripts/stack): fast schedules and small release
thresholds so the stack is useful within minutes, each applied only when the user has not set it; the
demo's additions (env/demo.yml); the one reader of those files (scripts/envfile.py); a store path the
functions can use from inside their build folders; a generated release token in the stack's state."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from movierec.errors import ConfigError
from scripts.envfile import EnvFileError, read_env_file
from scripts.stack import ROOT, StackConfig, absolute_store_url, ensure_release_token

LOCAL_DEFAULTS = read_env_file(ROOT / "env" / "local.yml")
DEMO_ENV = read_env_file(ROOT / "env" / "demo.yml")


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


def test_the_demo_adds_its_settings_where_the_caller_has_not_and_keeps_the_callers(tmp_path):
    from scripts.demo import local_stack_env

    env = local_stack_env({"RELEASE_WINDOW": "45s"}, state_dir=str(tmp_path / "state"))
    assert env["RELEASE_WINDOW"] == "45s"
    for name, value in DEMO_ENV.items():
        if name != "RELEASE_WINDOW":
            assert env[name] == value
    assert env["INGEST_SCHEDULE"] == env["TRAIN_SCHEDULE"] == "@every 1000h"  # left to the driver
    assert "RELEASE_ONLINE_QUALITY" not in env  # env/local.yml's, applied later by `scripts.stack up`


@pytest.mark.parametrize("text, says", [
    ("environment:\n  INGEST_MAX_SECONDS: 15\n", "INGEST_MAX_SECONDS must be a string (quote it), got int 15"),
    ("environment:\n  AUTO_RELEASE: yes\n", "AUTO_RELEASE must be a string (quote it), got bool True"),
    ("environment:\n  RMSE_MAX:\n", "RMSE_MAX must be a string (quote it), got NoneType None"),
    ("INGEST_SCHEDULE: '@every 1m'\n", "must hold only a top-level `environment:` map"),
    ("environment:\n  - A\n", "must hold only a top-level `environment:` map"),
    ("environment:\n  lower: 'x'\n", "'lower' is not an environment variable name"),
    ("environment: [\n", "not valid YAML"),
])
def test_an_env_file_holds_only_a_map_of_names_to_strings(tmp_path, text, says):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(EnvFileError) as e:
        read_env_file(path)
    assert isinstance(e.value, ConfigError) and says in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_env_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(EnvFileError, match="nope.yml: cannot read it"):
        read_env_file(tmp_path / "nope.yml")


def test_a_malformed_local_env_file_is_one_line_from_the_cli_not_a_traceback(tmp_path, monkeypatch, capsys):
    from scripts.stack import main

    bad = tmp_path / "local.yml"
    bad.write_text("environment:\n  INGEST_MAX_SECONDS: 15\n")
    monkeypatch.setattr("scripts.stack.config.LOCAL_ENV_FILE", bad)
    monkeypatch.setattr("scripts.stack.cli.ensure_packages", lambda: None)
    monkeypatch.setattr("scripts.stack.cli.services", lambda config: [])  # whatever happens, start nothing
    assert main(["up", "--state-dir", str(tmp_path / "state")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {bad}: INGEST_MAX_SECONDS must be a string (quote it), "
                                               "got int 15")
