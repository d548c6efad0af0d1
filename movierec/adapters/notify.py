"""Telling people a decision was made: SMTP email and/or a JSON webhook, both optional.

Owns: delivering one notification (a subject and a JSON-able payload) to every configured
channel, through the one retry helper, and reporting per channel whether it went out
("sent" / "failed: <one line naming the endpoint>"). A failed channel never raises: the decision
it reports has already been taken, so the caller records the outcome.

Configuration (movierec.settings): NOTIFY_WEBHOOK_URL; SMTP_HOST, SMTP_PORT, SMTP_FROM, SMTP_TO
(comma-separated), SMTP_STARTTLS; SMTP credentials from the secret files `smtp-user` /
`smtp-password` (optional: no login without them).

Must not touch: what is being decided (release policy) or how decisions are stored.
"""
from __future__ import annotations

import json
import logging
import smtplib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import requests

from movierec.adapters.retry import retry
from movierec.errors import Unavailable, one_line
from movierec.settings import Settings
from movierec.store import read_secret

log = logging.getLogger("movierec.notify")
_DEFAULTS = Settings({})


@dataclass
class Notifier:
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = _DEFAULTS.get("SMTP_PORT")
    smtp_from: str = _DEFAULTS.get("SMTP_FROM")
    smtp_to: list[str] = field(default_factory=list)
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> Notifier:
        settings = Settings(env)
        return cls(
            webhook_url=settings.get("NOTIFY_WEBHOOK_URL") or None,
            smtp_host=settings.get("SMTP_HOST") or None,
            smtp_port=settings.get("SMTP_PORT"),
            smtp_from=settings.get("SMTP_FROM"),
            smtp_to=settings.get("SMTP_TO"),
            smtp_user=read_secret("smtp-user", settings.env),
            smtp_password=read_secret("smtp-password", settings.env),
            smtp_starttls=settings.get("SMTP_STARTTLS"),
            **options,
        )

    def channels(self) -> list[str]:
        found = []
        if self.webhook_url:
            found.append("webhook")
        if self.smtp_host and self.smtp_to:
            found.append("email")
        return found

    def send(self, subject: str, payload: Mapping[str, Any]) -> dict[str, str]:
        """Deliver to every configured channel; returns {channel: "sent" | "failed: <why>"}."""
        outcome: dict[str, str] = {}
        if self.webhook_url:
            outcome["webhook"] = self._deliver(f"webhook {self.webhook_url}",
                                               lambda: self._post_webhook(subject, payload))
        if self.smtp_host and self.smtp_to:
            outcome["email"] = self._deliver(f"smtp {self.smtp_host}:{self.smtp_port}",
                                             lambda: self._send_email(subject, payload))
        return outcome

    def _deliver(self, what: str, deliver: Callable[[], None]) -> str:
        try:
            retry(deliver, what=what, attempts=self.attempts, backoff_s=self.backoff_s,
                  retry_on=(OSError, smtplib.SMTPException, requests.RequestException))
        except Unavailable as e:
            log.error("notification not delivered: %s", e)
            return f"failed: {e}"
        except Exception as e:  # e.g. a payload that is not JSON: a notification never fails its caller
            log.exception("notification by %s failed", what)
            return f"failed: {what}: {one_line(e)}"
        return "sent"

    def _post_webhook(self, subject: str, payload: Mapping[str, Any]) -> None:
        response = requests.post(
            self.webhook_url, json={"subject": subject, **payload}, timeout=self.timeout_s
        )
        if response.status_code >= 300:
            raise Unavailable(f"answered HTTP {response.status_code}")

    def _send_email(self, subject: str, payload: Mapping[str, Any]) -> None:
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.smtp_from
        message["To"] = ", ".join(self.smtp_to)
        message.set_content(json.dumps(payload, indent=2, sort_keys=True, default=str))
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_s) as smtp:
            if self.smtp_starttls:
                smtp.starttls()
            if self.smtp_user and self.smtp_password:
                smtp.login(self.smtp_user, self.smtp_password)
            smtp.send_message(message)
