"""Each function's handler imports with only what its image installs, so a heavy or missing import
cannot slip into an image unnoticed.

For every function of stack.yml (one per handler folder), its build context is made the way
`faas-cli build --shrinkwrap` makes it (localfaas.build: the template, the handler folder, and
`configuration.copy`'s core beside it), and `import handler` runs in a fresh interpreter (`-I`:
no PYTHONPATH, no user site, not the repository) behind an import hook that refuses every
top-level module outside:
- the standard library (`sys.stdlib_module_names`);
- the build context's own `function/` folder (the handler and the copied `movierec`);
- the function's requirements.txt and the template's, each with its dependency closure (from
  the installed distributions' metadata, extras left out), mapped to import names
  (scikit-surprise -> surprise, PyYAML -> yaml, ...).
The hook raises ModuleNotFoundError like a missing package, so an optional import a package
guards with `except ImportError` behaves as it does in the image. Environment: a local store and
a model path that does not exist, so nothing reaches a service at import time.

The list of functions and their allow-lists are read from the repository, not written here: a
new function or a changed requirements.txt is judged as it is.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from localfaas.build import build_function
from localfaas.stackfile import load_stack

REPO = Path(__file__).resolve().parent.parent
STACK = load_stack(REPO / "stack.yml", env={})
# One build per handler folder (recommend-canary is recommend's handler deployed twice).
FUNCTIONS = {}
for _fn in STACK.functions.values():
    if _fn.lang and all(other.handler != _fn.handler for other in FUNCTIONS.values()):
        FUNCTIONS[_fn.name] = _fn

# Runs in the fresh interpreter: argv = [allowed top-level names as JSON, the function folder].
CHILD = r"""
import importlib.abc, json, sys

allowed = frozenset(json.loads(sys.argv[1]))
refused = []
before = {m.partition(".")[0] for m in sys.modules}  # the interpreter's own start-up


class OnlyWhatTheImageInstalls(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in allowed or top in sys.stdlib_module_names:
            return None
        refused.append(fullname)
        raise ModuleNotFoundError(
            f"No module named {fullname!r}: not installed in this function's image "
            "(neither its requirements.txt nor the template's)", name=fullname)


sys.meta_path.insert(0, OnlyWhatTheImageInstalls())
sys.path.insert(0, sys.argv[2])
try:
    import handler  # noqa: F401
finally:
    imported = sorted({m.partition(".")[0] for m in sys.modules} - before - set(sys.stdlib_module_names))
    print(json.dumps({"refused": refused, "imported": imported}))
"""


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> list[str]:
    """The distribution names a requirements.txt installs (pins, markers and comments dropped)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(Requirement(line).name)
    return names


def dependency_closure(names: list[str]) -> set[str]:
    """The distributions `names` install with their dependencies (normalized names)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = _normalized(todo.pop())
        if name in seen:
            continue
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            if name in {_normalized(n) for n in names}:
                pytest.fail(f"{name} is a requirement but is not installed here: the test cannot judge it")
            continue  # a dependency for another platform or Python: absent in the image too
        seen.add(name)
        for raw in requires:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def import_names(distributions: set[str]) -> set[str]:
    """The top-level modules those distributions provide."""
    provided: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provided.setdefault(_normalized(dist), set()).add(module)
    return {module for dist in distributions for module in provided.get(dist, {dist.replace("-", "_")})}


def allowed_modules(context: Path) -> set[str]:
    """What an image built from `context` can import besides the standard library."""
    requirements = requirement_names(context / "requirements.txt")  # the template's
    own = context / "function" / "requirements.txt"
    if own.is_file():
        requirements += requirement_names(own)
    local = {p.stem if p.suffix == ".py" else p.name for p in (context / "function").iterdir()
             if p.suffix == ".py" or (p / "__init__.py").is_file()}
    return import_names(dependency_closure(requirements)) | local


def import_handler(context: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "STORE_URL": str(tmp_path / "store"),
           "MODEL_PATH": str(tmp_path / "no-model"), "SECRETS_DIR": str(tmp_path / "secrets"),
           "PUSHGATEWAY_URL": "", "MODEL_RETRY_SECONDS": "3600"}
    allowed = json.dumps(sorted(allowed_modules(context)))
    return subprocess.run([sys.executable, "-I", "-c", CHILD, allowed, str(context / "function")],
                          cwd=context, env=env, capture_output=True, text=True, timeout=180, check=False)


def outcome(result: subprocess.CompletedProcess) -> dict:
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"refused": [], "imported": []}


@pytest.fixture(scope="module")
def contexts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("build")
    return {name: build_function(STACK, fn, out).path for name, fn in FUNCTIONS.items()}


def test_every_handler_folder_of_the_stack_is_judged():
    handlers = {p.name for p in (REPO / "functions").iterdir() if (p / "handler.py").is_file()}
    assert {Path(fn.handler).name for fn in FUNCTIONS.values()} == handlers


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_handler_imports_with_only_its_image_installed(name, contexts, tmp_path):
    result = import_handler(contexts[name], tmp_path)
    assert result.returncode == 0, f"{name}: import handler failed:\n{result.stderr[-3000:]}"
    assert "handler" in outcome(result)["imported"]


def _variant(contexts, tmp_path, requirements: list[str], first_line: str) -> Path:
    """The recommend build context with other requirements and one more import in its handler."""
    context = tmp_path / "variant"
    shutil.copytree(contexts["recommend"], context)
    (context / "function" / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    handler = context / "function" / "handler.py"
    handler.write_text(f"{first_line}\n{handler.read_text()}")
    return context


@pytest.mark.parametrize("module, requirements", [
    ("requests", None),  # recommend's own requirements.txt does not install requests
    ("boto3", ["numpy"]),  # ... and a requirements.txt without boto3 cannot import it
])
def test_a_handler_importing_what_its_image_does_not_install_fails(module, requirements, contexts, tmp_path):
    own = requirement_names(contexts["recommend"] / "function" / "requirements.txt")
    context = _variant(contexts, tmp_path, own if requirements is None else requirements, f"import {module}")
    result = import_handler(context, tmp_path)
    assert result.returncode != 0
    assert f"No module named '{module}': not installed in this function's image" in result.stderr
    assert outcome(result)["refused"][:1] == [module]


def test_what_an_allowed_package_imports_itself_is_allowed(contexts, tmp_path):
    # boto3 pulls in botocore, jmespath, s3transfer, dateutil, urllib3 ...: its dependency closure.
    own = requirement_names(contexts["recommend"] / "function" / "requirements.txt")
    context = _variant(contexts, tmp_path, own, "import boto3")
    result = import_handler(context, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"boto3", "botocore", "jmespath", "dateutil", "urllib3"} <= set(outcome(result)["imported"])
