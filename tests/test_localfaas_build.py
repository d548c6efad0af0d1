"""localfaas builds contexts as `faas-cli build --shrinkwrap` does, and runs them with this Python."""
from __future__ import annotations

import subprocess
import sys

import pytest

from localfaas.build import BuildError, process_command, shrinkwrap
from localfaas.stackfile import load_stack
from tests.localfaas_harness import REPO, write_project


@pytest.fixture
def project(tmp_path):
    write_project(tmp_path)
    return tmp_path


def test_context_is_the_template_with_the_handler_over_function_and_copied_paths(project):
    contexts = shrinkwrap(load_stack(project / "stack.yml", env={}))
    echo = project / "build" / "echo"
    assert contexts["echo"].path == echo
    for name in ("Dockerfile", "index.py", "requirements.txt", "template.yml"):
        assert (echo / name).is_file()
    # The handler replaced the template's own function/handler.py.
    assert "shared_lib" in (echo / "function" / "handler.py").read_text()
    assert (echo / "function" / "shared_lib" / "__init__.py").is_file()
    assert contexts["echo"].fprocess == "python index.py"
    assert set(contexts) == {"echo", "spare", "recorder"}


def test_rebuild_wipes_files_that_are_gone_from_the_source(project):
    stack = load_stack(project / "stack.yml", env={})
    shrinkwrap(stack)
    stale = project / "build" / "echo" / "function" / "stale.py"
    stale.write_text("x = 1\n")
    shrinkwrap(stack)
    assert not stale.exists()
    assert (project / "build" / "echo" / "function" / "handler.py").is_file()


def test_missing_template_names_the_folder_to_add(project):
    text = (project / "stack.yml").read_text().replace("lang: python3-http-debian", "lang: no-such-lang", 1)
    (project / "stack.yml").write_text(text)
    with pytest.raises(BuildError, match="template 'no-such-lang' not found"):
        shrinkwrap(load_stack(project / "stack.yml", env={}))


def test_leading_python_is_replaced_by_this_interpreter():
    assert process_command("python index.py") == [sys.executable, "index.py"]
    assert process_command("python3 -u index.py") == [sys.executable, "-u", "index.py"]
    assert process_command("node index.js") == ["node", "index.js"]


def test_build_command_line_writes_the_contexts(project, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "localfaas", "build", "--stack", str(project / "stack.yml"),
                           "--out", str(out)], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (out / "recorder" / "function" / "handler.py").is_file()


def test_up_with_a_missing_secret_exits_2_naming_the_file(project):
    (project / "var" / "secrets" / "api-token").unlink()
    done = subprocess.run([sys.executable, "-m", "localfaas", "up", "--stack", str(project / "stack.yml"),
                           "--port", "0", "--state-dir", str(project / "var")],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "secret 'api-token' not found" in done.stderr and "chmod 600" in done.stderr
