"""localfaas reads stack.yml as faas-cli does: env substitution, anchors, validation."""
from __future__ import annotations

import pytest

from localfaas.stackfile import StackError, load_stack, parse_stack, substitute_env
from tests.localfaas_harness import REPO

BASE = """
version: 1.0
provider:
  name: openfaas
  gateway: ${OPENFAAS_URL:-http://127.0.0.1:8080}
functions:
  fn:
    lang: python3-http-debian
    handler: ./fn
    image: ${REGISTRY:-local}/fn:${TAG:-latest}
"""


def test_substitution_uses_value_then_default_and_unset_becomes_empty():
    text = "a=${A} b=${B:-dflt} c=${C:-dflt} d=${D}"
    assert substitute_env(text, {"A": "1", "C": "3"}) == "a=1 b=dflt c=3 d="


def test_empty_variable_takes_the_default_like_faas_cli():
    assert substitute_env("${A:-x}", {"A": ""}) == "x"


@pytest.mark.parametrize("form", ["${A-x}", "${A:?missing}", "${A:+x}", "${1A}"])
def test_unsupported_substitution_forms_are_refused_with_the_line(form):
    with pytest.raises(StackError, match=r"line 2: unsupported substitution"):
        substitute_env("ok: 1\nbad: " + form, {})


def test_substitution_applies_over_the_whole_file_before_parsing():
    stack = parse_stack(BASE, env={"TAG": "v2", "OPENFAAS_URL": "http://127.0.0.1:9999"})
    assert stack.gateway == "http://127.0.0.1:9999"
    assert stack.functions["fn"].image == "local/fn:v2"


def test_anchors_and_merge_keys_work_and_values_become_strings():
    stack = parse_stack("""
version: 1.0
provider: {name: openfaas}
functions:
  a: &a
    lang: l
    handler: ./a
    environment: &env {X: 1, FLAG: true, NAME: a}
    labels: {com.openfaas.scale.min: 2}
  b:
    <<: *a
    environment:
      <<: *env
      NAME: b
""", env={})
    a, b = stack.functions["a"], stack.functions["b"]
    assert a.environment == {"X": "1", "FLAG": "true", "NAME": "a"}
    assert b.environment == {"X": "1", "FLAG": "true", "NAME": "b"}
    assert b.handler == "./a" and b.labels == {"com.openfaas.scale.min": "2"}
    assert b.namespace == "openfaas-fn"


@pytest.mark.parametrize("change, message", [
    (("version: 1.0", "version: 2.0"), "version must be 1.0"),
    (("name: openfaas", "name: faas"), "provider.name must be 'openfaas'"),
    (("    lang: python3-http-debian\n    handler: ./fn\n    image: ${REGISTRY:-local}/fn:${TAG:-latest}\n", "    fprocess: x\n"),
     "needs `lang` and `handler`, or an `image`"),
])
def test_what_faas_cli_rejects_is_rejected_with_a_reason(change, message):
    with pytest.raises(StackError, match=message):
        parse_stack(BASE.replace(*change), env={})


def test_build_args_must_be_a_map():
    with pytest.raises(StackError, match="build_args must be a map"):
        parse_stack(BASE + "    build_args:\n      - A=1\n", env={})


def test_image_only_function_is_valid():
    stack = parse_stack(BASE.replace("    lang: python3-http-debian\n    handler: ./fn\n", ""), env={})
    assert stack.functions["fn"].lang == "" and stack.functions["fn"].image == "local/fn:latest"


def test_environment_file_values_override_inline_environment(tmp_path):
    (tmp_path / "env.yml").write_text("environment:\n  A: from-file\n  B: 2\n")
    (tmp_path / "stack.yml").write_text(BASE + "    environment: {A: inline, C: kept}\n"
                                               "    environment_file: [env.yml]\n")
    fn = load_stack(tmp_path / "stack.yml", env={}).functions["fn"]
    assert fn.environment == {"A": "from-file", "B": "2", "C": "kept"}


def test_missing_stack_file_is_one_clear_error(tmp_path):
    with pytest.raises(StackError, match="cannot read stack file"):
        load_stack(tmp_path / "nope.yml")


def test_the_project_stack_file_loads():
    stack = load_stack(REPO / "stack.yml", env={})
    assert "recommend" in stack.functions
    assert stack.gateway == "http://127.0.0.1:8080"
