"""Reading an OpenFaaS stack file the way faas-cli does.

Owns: environment substitution over the whole file text (`${VAR}`, `${VAR:-default}`; an unset
variable becomes ""), YAML parsing (anchors and merge keys work), the validation faas-cli applies
plus the name rules of the real providers (`localfaas.validate`: function names, namespaces,
secret names, env names, template names, environment_file paths inside the project), and the
typed view (`Stack`, `FunctionSpec`) the rest of localfaas reads.
Must not touch: building, running or calling functions.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localfaas import validate

DEFAULT_NAMESPACE = "openfaas-fn"

# `${NAME}` and `${NAME:-default}` are what faas-cli substitutes; any other `${...}` form
# (`${NAME-x}`, `${NAME:?x}`, `${NAME:+x}`) is not, and is refused here rather than
# silently meaning something different from production.
_SUBSTITUTION = re.compile(r"\$\{([^}]*)\}")
_SUPPORTED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


class StackError(ValueError):
    """A stack file that faas-cli would reject (or that localfaas cannot read)."""


def substitute_env(text: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        supported = _SUPPORTED.fullmatch(inner)
        if not supported:
            line = text.count("\n", 0, match.start()) + 1
            raise StackError(
                f"line {line}: unsupported substitution ${{{inner}}}: use ${{VAR}} or ${{VAR:-default}}"
            )
        name, default = supported.group(1), supported.group(2)
        value = env.get(name, "")
        if value == "" and default is not None:
            return default
        return value

    return _SUBSTITUTION.sub(replace, text)


def _as_str(value: Any) -> str:
    # YAML turns `true`/`20` into bool/int; containers only ever see strings, written the YAML way.
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StackError(f"{what} must be a map of names to values, got {type(value).__name__}")
    return {str(k): _as_str(v) for k, v in value.items()}


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise StackError(f"{what} must be a list, got {type(value).__name__}")
    return [_as_str(v) for v in value]


@dataclass
class FunctionSpec:
    name: str
    lang: str = ""
    handler: str = ""
    image: str = ""
    fprocess: str = ""
    namespace: str = DEFAULT_NAMESPACE
    environment: dict[str, str] = field(default_factory=dict)
    environment_file: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    constraints: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    readonly_root_filesystem: bool = False
    skip_build: bool = False


@dataclass
class Stack:
    path: Path
    provider_name: str
    gateway: str
    functions: dict[str, FunctionSpec]
    copy: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """Relative paths in the stack (handlers, copy, template/) are resolved from here."""
        return self.path.parent


def _read_environment_files(files: list[str], root: Path, fn: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name in files:
        try:
            path = validate.inside(root, name, f"function {fn}: environment_file")
        except validate.ValidationError as exc:
            raise StackError(str(exc)) from None
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise StackError(f"function {fn}: environment_file {name}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise StackError(f"function {fn}: environment_file {name} is not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping) or "environment" not in data:
            raise StackError(f"function {fn}: environment_file {name} must hold an `environment:` map")
        merged.update(_str_map(data["environment"], f"function {fn}: {name}: environment"))
    return merged


def _function(name: str, raw: Any, root: Path) -> FunctionSpec:
    try:
        validate.function_name(name)
    except validate.ValidationError as exc:
        raise StackError(f"functions: {exc}") from None
    if not isinstance(raw, Mapping):
        raise StackError(f"function {name}: must be a map of settings")
    spec = _function_spec(name, raw, root)
    try:
        validate.namespace(spec.namespace)
        validate.secret_names(spec.secrets)
        validate.environment(spec.environment)
        if spec.lang:
            validate.template_name(spec.lang)
    except validate.ValidationError as exc:
        raise StackError(f"function {name}: {exc}") from None
    return spec


def _function_spec(name: str, raw: Mapping[str, Any], root: Path) -> FunctionSpec:
    lang, handler, image = (_as_str(raw.get(k)) for k in ("lang", "handler", "image"))
    if not image and not (lang and handler):
        raise StackError(f"function {name}: needs `lang` and `handler`, or an `image`")
    if lang and not handler:
        raise StackError(f"function {name}: `lang: {lang}` needs a `handler` folder")
    if raw.get("build_args") is not None and not isinstance(raw.get("build_args"), Mapping):
        raise StackError(f"function {name}: build_args must be a map (KEY: value), not a list")
    env_files = _str_list(raw.get("environment_file"), f"function {name}: environment_file")
    environment = _str_map(raw.get("environment"), f"function {name}: environment")
    # faas-cli: values from environment_file override the inline environment.
    environment.update(_read_environment_files(env_files, root, name))
    return FunctionSpec(
        name=name,
        lang=lang,
        handler=handler,
        image=image,
        fprocess=_as_str(raw.get("fprocess")),
        namespace=_as_str(raw.get("namespace")) or DEFAULT_NAMESPACE,
        environment=environment,
        environment_file=env_files,
        secrets=_str_list(raw.get("secrets"), f"function {name}: secrets"),
        labels=_str_map(raw.get("labels"), f"function {name}: labels"),
        annotations=_str_map(raw.get("annotations"), f"function {name}: annotations"),
        limits=_str_map(raw.get("limits"), f"function {name}: limits"),
        requests=_str_map(raw.get("requests"), f"function {name}: requests"),
        constraints=_str_list(raw.get("constraints"), f"function {name}: constraints"),
        build_args=_str_map(raw.get("build_args"), f"function {name}: build_args"),
        readonly_root_filesystem=bool(raw.get("readonly_root_filesystem", False)),
        skip_build=bool(raw.get("skip_build", False)),
    )


def parse_stack(text: str, path: str | os.PathLike[str] = "stack.yml",
                env: Mapping[str, str] | None = None) -> Stack:
    path = Path(path)
    try:
        data = yaml.safe_load(substitute_env(text, env))
    except yaml.YAMLError as exc:
        raise StackError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise StackError(f"{path}: expected a map with version, provider and functions")
    version = data.get("version")
    if _as_str(version) not in ("1.0",):
        raise StackError(f"{path}: version must be 1.0, got {version!r}")
    provider = data.get("provider") or {}
    if not isinstance(provider, Mapping) or provider.get("name") != "openfaas":
        name = provider.get("name") if isinstance(provider, Mapping) else provider
        raise StackError(f"{path}: provider.name must be 'openfaas', got {name!r}")
    functions = data.get("functions") or {}
    if not isinstance(functions, Mapping):
        raise StackError(f"{path}: functions must be a map of function names to settings")
    configuration = data.get("configuration") or {}
    if not isinstance(configuration, Mapping):
        raise StackError(f"{path}: configuration must be a map")
    root = path.parent
    return Stack(
        path=path,
        provider_name="openfaas",
        gateway=_as_str(provider.get("gateway")),
        functions={str(n): _function(str(n), raw, root) for n, raw in functions.items()},
        copy=_str_list(configuration.get("copy"), "configuration.copy"),
    )


def load_stack(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Stack:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(f"cannot read stack file {path}: {exc.strerror}") from exc
    return parse_stack(text, path, env)
