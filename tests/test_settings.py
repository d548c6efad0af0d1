"""The settings table is the one place every environment variable is found, parsed one way."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from movierec.errors import ConfigError
from movierec.settings import BY_NAME, SETTINGS, Settings, markdown_table, parse_duration

ROOT = Path(__file__).resolve().parent.parent
# Variables of the process environment rather than of the product (read by code, set by the OS,
# the shell, the container or the Python runtime).
NOT_PRODUCT = {"PATH", "HOME", "USER", "TMPDIR", "HOSTNAME", "LANG", "LC_ALL", "LC_CTYPE", "VIRTUAL_ENV",
               "PYTHONPATH", "PYTHONUNBUFFERED", "DEBIAN_FRONTEND", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "CI", "SC_PAGE_SIZE"}
# Where product code reads the environment (tests and benchmarks set variables, they do not own them).
SOURCES = ("movierec", "functions", "scripts", "template", "localfaas", "gateway", "monitoring", "minio")


def test_the_readme_configuration_table_is_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", readme, re.DOTALL)
    assert block, "README.md lost its <!-- settings:begin/end --> markers"
    assert block.group(1) == markdown_table(), "regenerate it: python -m movierec.settings --readme README.md"


def _stack_defaults() -> list[tuple[str, str]]:
    found = []
    for line in (ROOT / "stack.yml").read_text().splitlines():
        code = line.split("#", 1)[0]
        found += re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", code)
    return found


def test_every_stack_yml_default_is_the_tables():
    pairs = _stack_defaults()
    assert pairs, "stack.yml has no ${VAR:-default} left: this test reads the wrong file"
    for name, default in pairs:
        assert name in BY_NAME, f"stack.yml substitutes {name}, which movierec/settings.py does not list"
        setting = BY_NAME[name]
        expected = setting.default if setting.deployed is None else setting.deployed
        assert default == expected, f"stack.yml: ${{{name}:-{default}}} but the table says {expected!r}"


def test_every_variable_of_the_env_files_is_in_the_table():
    from scripts.envfile import ENV_DIR, read_env_file

    files = sorted(ENV_DIR.glob("*.yml"))
    assert {p.name for p in files} >= {"local.yml", "demo.yml"}, "env/ lost its files: this test reads the wrong folder"
    for path in files:
        for name in read_env_file(path):
            assert name in BY_NAME, f"env/{path.name} sets {name}, which movierec/settings.py does not list"


def _env_names_read(path: Path) -> set[str]:
    """Names passed as string literals to env lookups: os.environ.get/[], os.getenv, env.get,
    Settings(...).get/raw/is_set."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "getenv", "raw", "is_set", "setdefault"):
                owner = ast.unparse(func.value)
                if re.search(r"(^|\.)(environ|env|_env|settings|Settings\(.*\)|os)$", owner):
                    names.add(node.args[0].value)
        if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                and re.search(r"(^|\.)(environ)$", ast.unparse(node.value))):
            names.add(node.slice.value)
    return {n for n in names if isinstance(n, str) and re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", n)}


def test_every_variable_the_code_reads_is_in_the_table():
    missing = {}
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            for name in _env_names_read(path) - NOT_PRODUCT - set(BY_NAME):
                missing.setdefault(name, str(path.relative_to(ROOT)))
    assert not missing, f"read from the environment but not in movierec/settings.py: {missing}"


def test_each_setting_has_a_kind_a_doc_and_a_parsable_default():
    assert len(BY_NAME) == len(SETTINGS), "a variable is listed twice"
    for s in SETTINGS:
        assert s.doc and s.group
        value = Settings({}).get(s.name)
        if s.default:
            assert value is not None


@pytest.mark.parametrize("raw", ["٣", "３", "1e400", "nan", "inf", "12abc", ""])
def test_numbers_are_ascii_and_finite(raw):
    if raw == "":  # blank is the default, never an error
        assert Settings({"SMTP_PORT": raw}).get("SMTP_PORT") == 25
        return
    with pytest.raises(ConfigError, match="SMTP_PORT must be an integer|RELEASE_ALPHA must be a number"):
        Settings({"SMTP_PORT": raw}).get("SMTP_PORT")
    with pytest.raises(ConfigError):
        Settings({"RELEASE_ALPHA": raw}).get("RELEASE_ALPHA")


def test_errors_name_the_variable_and_the_bound_in_one_line():
    with pytest.raises(ConfigError) as e:
        Settings({"CANARY_PERCENT": "150"}).get("CANARY_PERCENT")
    assert str(e.value) == "CANARY_PERCENT must be at most 100, got '150'"
    with pytest.raises(ConfigError, match="^RELEASE_WINDOW must be a duration"):
        Settings({"RELEASE_WINDOW": "soon"}).get("RELEASE_WINDOW")
    with pytest.raises(ConfigError, match="^AUTO_RELEASE must be 1 or 0"):
        Settings({"AUTO_RELEASE": "maybe"}).get("AUTO_RELEASE")


def test_typed_values_blank_means_default():
    s = Settings({"RELEASE_WINDOW": "90s", "AUTO_RELEASE": "no", "SMTP_TO": " a@x ,, b@y ", "RMSE_MAX": "  "})
    assert s.get("RELEASE_WINDOW") == 90.0
    assert s.get("AUTO_RELEASE") is False
    assert s.get("SMTP_TO") == ["a@x", "b@y"]
    assert s.get("RMSE_MAX") is None  # blank default: params.yaml's value applies
    assert s.get("PUSHGATEWAY_URL") == ""  # blank means no push, everywhere
    assert not s.is_set("RMSE_MAX")


def test_durations_take_units_and_only_ascii_digits():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2h") == 7200
    assert parse_duration("90") == 90
    for bad in ("1h30m", "-5s", "٣s", "5 s", "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_an_unknown_name_is_a_programming_error():
    with pytest.raises(KeyError, match="not in movierec.settings.SETTINGS"):
        Settings({}).get("NO_SUCH_SETTING")
