"""The release function's replies follow the error taxonomy: a bad setting is a 400 naming the
variable, a dependency down a 503, a method or route that does not exist 405/404, and anything
unexpected a 500 that says so without a traceback. (Routes and credentials against real services:
test_release_services.py and test_release_cli.py.)"""
from __future__ import annotations

import pytest

from movierec.store import StoreUnavailableError
from tests.release_fakes import handler_event, load_release_handler

CRON = {"Authorization": "Bearer cron-tok"}


@pytest.fixture
def handler(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("STORE_URL", str(tmp_path / "store"))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cron-token").write_text("cron-tok\n")
    return load_release_handler("release_handler_taxonomy")


def test_a_bad_release_setting_is_a_400_naming_the_variable(handler, monkeypatch):
    monkeypatch.setenv("RELEASE_WINDOW", "two hours")
    reply = handler.handle(handler_event("POST", "/step", CRON), None)
    assert reply["statusCode"] == 400
    assert reply["body"]["error"].startswith("ConfigError: RELEASE_WINDOW must be a duration")
    assert reply["headers"]["Content-Type"] == "application/json"


def test_an_unavailable_store_is_a_503(handler, monkeypatch):
    def down():
        raise StoreUnavailableError("store s3://movierec unreachable")

    monkeypatch.setattr(handler, "open_store", down)
    reply = handler.handle(handler_event("GET", "/status"), None)
    assert reply["statusCode"] == 503 and reply["body"] == {"error": "StoreUnavailableError: store s3://movierec unreachable"}


def test_other_methods_and_unknown_actions_are_refused(handler):
    reply = handler.handle(handler_event("PUT", "/step"), None)
    assert reply["statusCode"] == 405 and reply["headers"]["Allow"] == "GET, POST"
    reply = handler.handle(handler_event("POST", "/deploy"), None)
    assert reply["statusCode"] == 404 and "unknown action /deploy" in reply["body"]["error"]


def test_an_unexpected_error_is_a_500_without_internals(handler, monkeypatch):
    def broken(store):
        raise RuntimeError("secret internals\nTraceback ...")

    monkeypatch.setattr(handler, "status", broken)
    reply = handler.handle(handler_event("GET", "/status"), None)
    assert reply["statusCode"] == 500 and "RuntimeError" in reply["body"]["error"]
    assert "internals" not in reply["body"]["error"]


def test_a_step_while_another_holds_the_lease_is_a_409_naming_it(handler, tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from movierec.release import Release, ReleaseStore, acquire_lease
    from movierec.store import LocalDirectoryStore

    store = LocalDirectoryStore(tmp_path / "store")
    ReleaseStore(store).save(Release(id="r1", candidate="v2", stable="v1", state="canary",
                                     started="2026-11-28T01:00:00Z", updated="2026-11-28T01:00:00Z"))
    held = acquire_lease(store, "step", 180, datetime.now(UTC), holder="step on release-abc pid 7")
    monkeypatch.setenv("OPENFAAS_URL", "http://127.0.0.1:9")  # never reached: refused before any call
    reply = handler.handle(handler_event("POST", "/step", CRON), None)
    assert reply["statusCode"] == 409
    assert reply["body"]["error"].startswith("LeaseHeld: release lease held by step on release-abc pid 7 (token 1) "
                                             "until ")
    assert f"until {held.record['expires']}: one release step acts at a time" in reply["body"]["error"]
    held.release()


def test_a_step_needs_the_cron_token_or_the_admin_token_and_the_cron_token_is_not_enough_to_promote(handler, tmp_path):
    for path in ("/", "/step"):
        assert handler.handle(handler_event("POST", path), None)["statusCode"] == 401
        cron_only = handler.handle(handler_event("POST", path, {"X-Topic": "cron-function"}), None)
        assert cron_only["statusCode"] == 401 and "cron-token" in cron_only["body"]["error"]
        assert handler.handle(handler_event("POST", path, CRON), None)["statusCode"] == 200
    (tmp_path / "secrets" / "release-admin-token").write_text("admin-tok")
    assert handler.handle(handler_event("POST", "/step", {"Authorization": "Bearer admin-tok"}), None)["statusCode"] == 200
    assert handler.handle(handler_event("POST", "/promote", CRON), None)["statusCode"] == 401
