"""Build contexts, made exactly as `faas-cli build --shrinkwrap` makes them (no Docker needed).

Owns: `build/<fn>/` = a copy of `template/<lang>/`, whose `function/` folder is overlaid by the
handler folder's contents, plus each `configuration.copy` path at `build/<fn>/function/<path>`;
and the command that runs a build context locally (the template's `fprocess`). Every path it reads
(template, handler, copied paths) must lie inside the project, and the only thing it ever deletes
is `build/<fn>/` itself, after checking that it lies inside the build folder (`localfaas.validate`).
Must not touch: the handler or template folders themselves (read only), running processes,
anything outside the build folder.
"""
from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from localfaas import validate
from localfaas.stackfile import FunctionSpec, Stack, StackError

# Interpreter caches are not part of a function's source; faas-cli's Docker build would copy
# them, but they only make rebuilds noisy here.
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


class BuildError(StackError):
    pass


@dataclass(frozen=True)
class BuildContext:
    function: str
    path: Path
    fprocess: str  # the process the template's watchdog would start, e.g. "python index.py"


def template_dir(stack: Stack, lang: str) -> Path:
    return stack.root / "template" / lang


def template_fprocess(template: Path) -> str:
    meta = template / "template.yml"
    try:
        data = yaml.safe_load(meta.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"template {template.name}: cannot read {meta}: {exc}") from exc
    fprocess = str(data.get("fprocess") or "").strip()
    if not fprocess:
        raise BuildError(f"template {template.name}: {meta} has no fprocess")
    return fprocess


def _copy_into(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=_IGNORE)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def _copy_target(path: str) -> Path:
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts or not path or rel == Path("."):
        raise BuildError(f"configuration.copy: {path!r} must be a relative path inside the project")
    return rel


def _checked(call, *args):
    try:
        return call(*args)
    except validate.ValidationError as exc:
        raise BuildError(str(exc)) from None


def build_function(stack: Stack, fn: FunctionSpec, out_dir: str | Path) -> BuildContext:
    if not fn.lang:
        raise BuildError(f"function {fn.name}: has no lang, only an image ({fn.image}); nothing to build")
    _checked(validate.function_name, fn.name)
    _checked(validate.template_name, fn.lang)
    template = _checked(validate.inside, stack.root, Path("template") / fn.lang, f"function {fn.name}: template")
    if not template.is_dir():
        raise BuildError(
            f"function {fn.name}: template {fn.lang!r} not found at {template} "
            f"(faas-cli template pull, or add template/{fn.lang}/)"
        )
    handler = _checked(validate.inside, stack.root, fn.handler, f"function {fn.name}: handler")
    if not handler.is_dir() or handler.resolve() == stack.root.resolve():
        raise BuildError(f"function {fn.name}: handler folder {stack.root / fn.handler} does not exist")
    out = Path(out_dir)
    dest = out / fn.name
    # Wipe and recreate so a rebuild never keeps files deleted from the handler or template; only
    # ever build/<fn>/ itself, checked to lie inside the build folder.
    if dest.exists() or dest.is_symlink():
        _checked(validate.remove_tree, dest, out)
    if fn.lang == "dockerfile":
        shutil.copytree(handler, dest, ignore=_IGNORE)
        return BuildContext(fn.name, dest, fn.fprocess)
    shutil.copytree(template, dest, ignore=_IGNORE)
    _copy_into(handler, dest / "function")
    for path in stack.copy:
        rel = _copy_target(path)
        src = _checked(validate.inside, stack.root, rel, "configuration.copy")
        if not src.exists():
            raise BuildError(f"configuration.copy: {path} does not exist under {stack.root}")
        _copy_into(src, dest / "function" / rel)
    return BuildContext(fn.name, dest, fn.fprocess or template_fprocess(template))


def shrinkwrap(stack: Stack, out_dir: str | Path | None = None,
               only: list[str] | None = None) -> dict[str, BuildContext]:
    """Build contexts for every function with a `lang` (or the named ones), in `out_dir`
    (default `build/` beside the stack file)."""
    out = Path(out_dir) if out_dir is not None else stack.root / "build"
    out.mkdir(parents=True, exist_ok=True)
    contexts = {}
    for name, fn in stack.functions.items():
        if only is not None and name not in only:
            continue
        if fn.lang and not fn.skip_build:
            contexts[name] = build_function(stack, fn, out)
    return contexts


def process_command(fprocess: str) -> list[str]:
    """The argv to run locally: the fprocess, with a leading `python`/`python3` replaced by this
    interpreter so the function's dependencies resolve from the project's virtualenv."""
    argv = shlex.split(fprocess)
    if not argv:
        raise BuildError("empty fprocess: nothing to run")
    if argv[0] in ("python", "python3") or argv[0].startswith("python3."):
        argv[0] = sys.executable
    return argv
