"""What localfaas accepts as names, paths and processes: the rules the real providers apply.

A name in a stack file or a deployment becomes a folder, a file, a URL segment or (on Kubernetes) a
Service, so it is checked before anything uses it:
- function names: a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63), what faas-netes
  requires of a Service, which is stricter than the gateway's route rule `[-a-zA-Z_0-9.]+` (also
  checked: `route_name`); so `.`, `..`, `a/b` and `../x` are refused everywhere;
- namespaces: a DNS-1123 label; secret names: a DNS-1123 subdomain (at most 253), as Kubernetes;
- numbers from labels, settings and query strings: ASCII digits only (`whole_number`,
  `finite_number`; Python's int()/float() take other scripts' digits, `nan` and `inf`);
- environment variable names: Kubernetes' rule `[-._a-zA-Z][-._a-zA-Z0-9]*`; values without NUL;
- template (`lang`) names: the route rule, never `.`/`..`;
- paths from the stack (handler folders, `configuration.copy`, `environment_file`): relative and
  without `..`, so the stack file cannot name anything outside the project (a symlink the
  project's owner put inside it is followed for reading, as faas-cli does; never for deleting);
- `envProcess`: only the process the stack itself gives the function (its `fprocess`, or the
  template's) may run; any other is refused (OpenFaaS runs it inside the function's container,
  localfaas would run it on the host as the stack's user);
- deleting: `remove_tree` removes a folder only when, resolved, it lies strictly inside the folder
  it is meant to be in (a build context inside the build folder), and never follows a symlink out.

Used by `stackfile` (every function of a stack file), `build` (paths, and the one delete) and
`secretstore` (secret names), and for the gateway's deployment body (PUT/POST /system/functions):
`functionconfig.FunctionConfig.from_deployment` checks its `service`, `namespace`, `secrets` and
`envVars`, and `system_api` its `envProcess` against the image's own process; each refusal is a
400 with one line.

Owns: the rules above (the names' in one table, `NAME_RULES`: pattern, longest length, message)
and `ValidationError`. Must not touch: reading the stack file, building,
running processes, HTTP (callers turn a ValidationError into their own error or a 400).
"""
from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
ROUTE_NAME = re.compile(r"(?!\.\.?\Z)[-a-zA-Z_0-9.]+")  # the gateway's {name} in /function/{name}; not . or ..
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")  # Kubernetes' rule for container env names
MAX_LABEL, MAX_SUBDOMAIN = 63, 253
_UNBOUNDED = 1 << 30  # the gateway's route rule and template names set no length


class ValidationError(ValueError):
    """A name, path or process localfaas refuses; the message is one line and says the rule."""


@dataclass(frozen=True)
class NameRule:
    """One kind of name: what it is called when missing, its pattern (whole name), its longest
    length, and what a refusal says after `invalid <kind> '<name>': `."""

    required: str
    kind: str
    pattern: re.Pattern[str]
    max_length: int
    says: str


NAME_RULES = {
    "function": NameRule("a function name", "function name", DNS1123_LABEL, MAX_LABEL,
                         "use lower-case letters, digits and '-', starting and ending with a letter or digit "
                         f"(at most {MAX_LABEL}, DNS-1123)"),
    "route": NameRule("a route name", "function name", ROUTE_NAME, _UNBOUNDED, "expected [-a-zA-Z_0-9.]+"),
    "namespace": NameRule("a namespace", "namespace", DNS1123_LABEL, MAX_LABEL,
                          f"a DNS-1123 label (lower-case letters, digits, '-', at most {MAX_LABEL})"),
    "secret": NameRule("a secret name", "secret name", DNS1123_SUBDOMAIN, MAX_SUBDOMAIN,
                       "use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit "
                       f"(at most {MAX_SUBDOMAIN})"),
    "template": NameRule("a template (lang)", "template name", ROUTE_NAME, _UNBOUNDED, "expected [-a-zA-Z_0-9.]+"),
}


def checked_name(kind: str, name: object) -> str:
    """`name` when it follows NAME_RULES[kind], else a ValidationError saying the rule."""
    rule = NAME_RULES[kind]
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{rule.required} is required")
    if len(name) > rule.max_length or not rule.pattern.fullmatch(name):
        raise ValidationError(f"invalid {rule.kind} {name[:80]!r}: {rule.says}")
    return name


def function_name(name: object) -> str:
    """A function (service) name: a DNS-1123 label."""
    return checked_name("function", name)


def route_name(name: object) -> str:
    """A `{name}` of `/function/{name}`: `[-a-zA-Z_0-9.]+`, never `.` or `..`."""
    return checked_name("route", name)


def namespace(name: object) -> str:
    return checked_name("namespace", name)


def secret_name(name: object) -> str:
    return checked_name("secret", name)


def secret_names(names: Iterable[object]) -> list[str]:
    return [secret_name(n) for n in names]


def environment(env: Mapping[object, object]) -> dict[str, str]:
    """Environment variables: names by Kubernetes' rule, string values without NUL."""
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ValidationError(f"invalid environment variable name {str(key)[:80]!r}: "
                                  f"expected [-._a-zA-Z][-._a-zA-Z0-9]*")
        if not isinstance(value, str) or "\0" in value:
            raise ValidationError(f"environment variable {key}: the value must be text without NUL")
        checked[key] = value
    return checked


def template_name(lang: object) -> str:
    return checked_name("template", lang)


_WHOLE = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def whole_number(text: str) -> int:
    """An int written in ASCII digits (int() alone takes '٣' and '３' as 3, and '1_000')."""
    if not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"{text[:40]!r} is not a whole number")
    return int(text)


def finite_number(text: str) -> float:
    """A finite float written in ASCII digits (float() alone takes 'nan', 'inf' and '٣')."""
    if not _DECIMAL.fullmatch(text.strip()):
        raise ValueError(f"{text[:40]!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]!r} is not a finite number")
    return value


def env_process(requested: str | None, own: str) -> str:
    """The process to run for a function: `own` (the stack's fprocess or the template's). A
    deployment may repeat it but not name another: that would run a host command."""
    if requested and requested.strip() != own.strip():
        raise ValidationError(f"envProcess {requested[:80]!r} is not the stack's own ({own!r}): localfaas runs "
                              f"only the process the stack file gives a function")
    return own


def inside(root: str | os.PathLike[str], relative: str | os.PathLike[str], what: str) -> Path:
    """`root / relative` when `relative` names a path inside `root`: relative, no `..`, no NUL."""
    text = str(relative)
    rel = Path(text)
    if not text or "\0" in text or rel.is_absolute() or ".." in rel.parts:
        raise ValidationError(f"{what}: {text[:120]!r} must be a relative path inside the project")
    return Path(root) / rel


def remove_tree(path: str | os.PathLike[str], container: str | os.PathLike[str]) -> None:
    """Delete the folder `path`, only if it lies strictly inside `container` (both resolved; a
    symlink at `path` is unlinked, never followed). Anything else is refused, nothing is deleted."""
    base = Path(container).resolve()
    path = Path(path)
    if path.is_symlink():
        if base not in path.parent.resolve().parents and path.parent.resolve() != base:
            raise ValidationError(f"refusing to delete {path}: not inside {base}")
        path.unlink()
        return
    target = path.resolve()
    if target == base or base not in target.parents:
        raise ValidationError(f"refusing to delete {target}: not inside {base}")
    shutil.rmtree(target, ignore_errors=True)
