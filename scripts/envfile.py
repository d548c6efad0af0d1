"""Environment files in faas-cli's `environment_file` shape: a top-level `environment:` map whose
values are all strings, e.g. env/local.yml (what `make up` sets) and env/demo.yml (what the demo adds).

Owns: `read_env_file(path)` (the map, in file order) and `ENV_DIR` (the repo's `env/` folder);
refusing anything but a map of names to strings, with one line naming the file and the variable
(`EnvFileError`, a `ConfigError`). A number must be quoted: "15", not 15, so that what the file
says is exactly what the process sees.

Must not touch: what the variables mean (movierec/settings.py lists them all) or when they apply
(each caller decides: `make up` and the demo set them only where the user has not).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from movierec.errors import ConfigError

ENV_DIR = Path(__file__).resolve().parent.parent / "env"
_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class EnvFileError(ConfigError):
    """An environment file is not `environment:` mapping names to strings (one line, names the file)."""


def read_env_file(path: Path | str) -> dict[str, str]:
    """The file's `environment:` map. Names are upper-case identifiers, values strings."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise EnvFileError(f"{path}: cannot read it: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise EnvFileError(f"{path}: not valid YAML{line}") from None
    environment = data.get("environment") if isinstance(data, dict) else None
    if not isinstance(environment, dict) or set(data) != {"environment"}:
        raise EnvFileError(f"{path}: must hold only a top-level `environment:` map of NAME: \"value\"")
    for name, value in environment.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise EnvFileError(f"{path}: {name!r} is not an environment variable name")
        if not isinstance(value, str):
            raise EnvFileError(f"{path}: {name} must be a string (quote it), got {type(value).__name__} {value!r}")
    return dict(environment)
