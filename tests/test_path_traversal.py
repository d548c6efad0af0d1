"""The path-traversal table: every name or path a caller or a stack file controls that becomes a
file, a folder or a process, tried with what an attacker would send. Each row must be refused with
the component's own error (never a bare ValueError/OSError from deep inside), and nothing outside
the project, the store or the build folder may change. `test_the_table_holds` prints tried / held."""
from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from localfaas import validate
from localfaas.build import BuildError, shrinkwrap
from localfaas.secretstore import SecretError, SecretStore
from localfaas.stackfile import StackError, load_stack, parse_stack
from movierec.registry import ModelNotFoundError, Registry, RegistryError
from movierec.store import LocalDirectoryStore, StoreRejectedError
from tests.localfaas_harness import write_project

HOSTILE_NAMES = ["..", ".", "../x", "../../etc", "a/b", "/etc/hostname", "a\n", "a\x00", "A", "-a", "a-", "a_b",
                 "x" * 64, "a..b/c", "a b", "\u0430dmin"]  # the last: Cyrillic a
HOSTILE_KEYS = ["../x", "/etc/passwd", "a/../../b", "a//b", "a/./b", "a\x00b", "a\\..\\b", "a\nb", "x" * 2000,
                "", "models/../../outside"]
HOSTILE_PATHS = ["../outside", "/etc", "../../", "a/../../outside"]


def stack_text(name: str = "echo", **fields: str) -> str:
    body = {"lang": "python3-http-debian", "handler": "./functions/echo", **fields}
    lines = "\n".join(f"    {k}: {v}" for k, v in body.items())
    return f"version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  {name!r}:\n{lines}\n"


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    write_project(root)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("must survive")
    return root


def _rows(project: Path) -> list[tuple[str, Callable[[], object], type[BaseException]]]:
    rows: list[tuple[str, Callable[[], object], type[BaseException]]] = []
    for name in HOSTILE_NAMES:
        rows.append((f"stack function name {name!r}", lambda n=name: parse_stack(stack_text(n)), StackError))
        rows.append((f"stack namespace {name!r}", lambda n=name: parse_stack(stack_text(namespace=repr(n))),
                     StackError))
        if name != "x" * 64:  # a DNS-1123 subdomain may be 253 long: that one is a valid secret name
            rows.append((f"stack secret {name!r}", lambda n=name: parse_stack(stack_text(secrets=f"[{n!r}]")),
                         StackError))
            rows.append((f"secret API name {name!r}",
                         lambda n=name: SecretStore(project / "var" / "secrets").create(n, b"v"), SecretError))
        if name in ("..", ".", "../x", "../../etc", "a/b", "/etc/hostname", "a\n", "a\x00", "a b"):
            rows.append((f"stack lang {name!r}", lambda n=name: parse_stack(stack_text(lang=repr(n))), StackError))
        if name != "a-":  # a valid alias name
            rows.append((f"registry alias {name!r}", lambda n=name: Registry(LocalDirectoryStore(project / "store"))
                         .set_alias(n, None), RegistryError))
        rows.append((f"registry version {name!r}", lambda n=name: Registry(LocalDirectoryStore(project / "store"))
                     .get(n), ModelNotFoundError))
    for env_name in ("A=B", "1A", "", "A\x00", "A B", "A/B"):
        rows.append((f"stack env name {env_name!r}",
                     lambda e=env_name: validate.environment({e: "x"}), validate.ValidationError))
    rows.append(("stack env value with NUL", lambda: validate.environment({"A": "x\x00y"}), validate.ValidationError))
    for key in HOSTILE_KEYS:
        store = LocalDirectoryStore(project / "store")
        for op, call in (("get", lambda k=key, s=store: s.get(k)),
                         ("put_once", lambda k=key, s=store: s.put_once(k, b"x")),
                         ("replace", lambda k=key, s=store: s.replace(k, b"x")),
                         ("exists", lambda k=key, s=store: s.exists(k))):
            rows.append((f"store {op} key {key[:40]!r}", call, StoreRejectedError))
    for path in HOSTILE_PATHS:
        rows.append((f"build handler {path!r}", lambda p=path: _build(project, handler=p), BuildError))
        rows.append((f"build copy {path!r}", lambda p=path: _build(project, copy=p), BuildError))
        rows.append((f"stack environment_file {path!r}",
                     lambda p=path: parse_stack(stack_text(environment_file=f"[{p!r}]"), project / "stack.yml"),
                     StackError))
    rows.append(("envProcess other than the stack's", lambda: validate.env_process("sh -c 'cat /etc/hostname'",
                                                                                 "python index.py"),
                 validate.ValidationError))
    rows.append(("envProcess with a trailing command", lambda: validate.env_process("python index.py; id",
                                                                                  "python index.py"),
                 validate.ValidationError))
    rows.append(("delete the build folder itself", lambda: validate.remove_tree(project / "build", project / "build"),
                 validate.ValidationError))
    rows.append(("delete outside the build folder",
                 lambda: validate.remove_tree(project / "build" / ".." / "echo", project / "build"),
                 validate.ValidationError))
    rows.append(("delete the project's parent", lambda: validate.remove_tree(project.parent, project / "build"),
                 validate.ValidationError))
    return rows


def _build(project: Path, handler: str = "./functions/echo", copy: str | None = None):
    text = textwrap.dedent(f"""\
        version: 1.0
        provider:
          name: openfaas
        configuration:
          copy: [{copy!r}]
        functions:
          echo:
            lang: python3-http-debian
            handler: {handler!r}
        """) if copy else stack_text(handler=repr(handler))
    (project / "attack.yml").write_text(text)
    return shrinkwrap(load_stack(project / "attack.yml", env={}), project / "build")


def test_the_table_holds(project):
    rows = _rows(project)
    held, failed = 0, []
    for name, call, error in rows:
        try:
            call()
        except error:
            held += 1
        except BaseException as exc:  # noqa: BLE001 (a refusal by the wrong error is a failure of the row)
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            failed.append(f"{name}: accepted")
    print(f"path-traversal table: {len(rows)} tried, {held} held")
    assert not failed, failed
    assert (project.parent / "outside" / "keep.txt").read_text() == "must survive"
    assert (project / "stack.yml").is_file() and (project / "functions" / "echo").is_dir()  # the project is intact


def test_a_function_named_dot_dot_cannot_delete_the_project(project):
    (project / "stack.yml").write_text(stack_text(".."))
    with pytest.raises(StackError, match="invalid function name"):
        shrinkwrap(load_stack(project / "stack.yml", env={}))
    assert (project / "functions" / "echo" / "handler.py").is_file()


def test_the_build_rows_fail_for_their_path_only(project):
    """Controls: the same builds with a good handler and a good copy path succeed."""
    assert _build(project)["echo"].path == project / "build" / "echo"
    assert (_build(project, copy="shared_lib")["echo"].path / "function" / "shared_lib" / "__init__.py").is_file()
    assert parse_stack(stack_text(), project / "stack.yml").functions["echo"].namespace == "openfaas-fn"


def test_a_build_folder_replaced_by_a_symlink_is_unlinked_not_followed(project):
    stack = load_stack(project / "stack.yml", env={})
    (project / "build").mkdir()
    (project / "build" / "echo").symlink_to(project.parent / "outside")
    shrinkwrap(stack)
    assert (project.parent / "outside" / "keep.txt").read_text() == "must survive"
    assert (project / "build" / "echo" / "index.py").is_file() and not (project / "build" / "echo").is_symlink()


def test_the_projects_own_names_and_process_pass():
    assert validate.function_name("recommend-canary") == "recommend-canary"
    assert validate.namespace("openfaas-fn") == "openfaas-fn"
    assert validate.secret_name("basic-auth-user") == "basic-auth-user"
    assert validate.env_process("", "python index.py") == "python index.py"
    assert validate.env_process("python index.py", "python index.py") == "python index.py"
    stack = load_stack(Path(__file__).resolve().parents[1] / "stack.yml", env={})
    assert set(stack.functions) == {"recommend", "recommend-canary", "ingest", "train", "release"}


@pytest.mark.parametrize("kind", sorted(validate.NAME_RULES))
def test_every_name_rule_refuses_a_trailing_newline_a_name_over_its_length_and_none_in_one_line(kind):
    rule = validate.NAME_RULES[kind]
    longest = "a" * min(rule.max_length, 300)
    assert validate.checked_name(kind, longest) == longest
    refused = ["a\n", None, "", "..", "a" * (rule.max_length + 1)] if rule.max_length < 300 else ["a\n", None, "", ".."]
    for name in refused:
        with pytest.raises(validate.ValidationError) as caught:
            validate.checked_name(kind, name)
        message = str(caught.value)
        assert "\n" not in message and (rule.kind in message or rule.required in message)
