"""Telling people a decision was made: SMTP email and/or a JSON webhook, both optional.

Owns: delivering one notification (a subject and a JSON-able payload) to every configured
channel, with retries, and reporting per channel whether it went out. A failed channel never
raises: the decision it reports has already been taken, so the caller records the outcome.

Configuration (env): `NOTIFY_WEBHOOK_URL`; `SMTP_HOST`, `SMTP_PORT` (25), `SMTP_FROM`,
`SMTP_TO` (comma-separated), `SMTP_STARTTLS` (0/1); SMTP credentials from the secret files
`smtp-user` / `smtp-password` (optional: no login without them).

Must not touch: what is being decided (release policy) or how decisions are stored.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import requests

from movierec.store import read_secret

log = logging.getLogger("movierec.notify")


@dataclass
class Notifier:
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "movierec@localhost"
    smtp_to: list[str] = field(default_factory=list)
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = dict(os.environ if env is None else env)
        return cls(
            webhook_url=env.get("NOTIFY_WEBHOOK_URL") or None,
            smtp_host=env.get("SMTP_HOST") or None,
            smtp_port=int(env.get("SMTP_PORT") or 25),
            smtp_from=env.get("SMTP_FROM") or "movierec@localhost",
            smtp_to=[a.strip() for a in (env.get("SMTP_TO") or "").split(",") if a.strip()],
            smtp_user=read_secret("smtp-user", env),
            smtp_password=read_secret("smtp-password", env),
            smtp_starttls=(env.get("SMTP_STARTTLS") or "0").lower() in ("1", "true", "yes"),
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
            outcome["webhook"] = self._retrying("webhook", lambda: self._post_webhook(subject, payload))
        if self.smtp_host and self.smtp_to:
            outcome["email"] = self._retrying("email", lambda: self._send_email(subject, payload))
        return outcome

    def _retrying(self, channel: str, deliver) -> str:
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                deliver()
                return "sent"
            except (OSError, smtplib.SMTPException, requests.RequestException, RuntimeError) as e:
                last = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        log.error("notification by %s failed after %d attempts: %s", channel, self.attempts, last)
        return f"failed: {last}"

    def _post_webhook(self, subject: str, payload: Mapping[str, Any]) -> None:
        response = requests.post(
            self.webhook_url, json={"subject": subject, **payload}, timeout=self.timeout_s
        )
        if response.status_code >= 300:
            raise RuntimeError(f"webhook {self.webhook_url} answered HTTP {response.status_code}")

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
