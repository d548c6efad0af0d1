"""The layout is the architecture: the domain imports no service client, localfaas knows no movies,
operator code imports no tests, and every module is small enough to read or says why it is not."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What only adapters may import: clients of services and web frameworks.
SERVICE_CLIENTS = {"requests", "boto3", "botocore", "kafka", "smtplib", "prometheus_client", "aiohttp",
                   "flask", "waitress", "granian", "urllib3", "http", "moto", "aiobotocore"}
MAX_LINES = 450


def _imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _domain_modules() -> list[Path]:
    return [p for p in _modules("movierec") if "adapters" not in p.relative_to(ROOT / "movierec").parts]


@pytest.mark.parametrize("path", _domain_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_domain_imports_no_service_client_and_no_adapter(path):
    bad = {name for name in _imports(path)
           if name.split(".")[0] in SERVICE_CLIENTS or name.startswith("movierec.adapters")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: move that code to movierec/adapters/"


def test_adapters_hold_the_service_clients():
    clients = {name.split(".")[0] for p in _modules("movierec/adapters") for name in _imports(p)}
    assert {"requests", "boto3", "kafka", "smtplib"} <= clients


@pytest.mark.parametrize("path", _modules("localfaas"), ids=lambda p: str(p.relative_to(ROOT)))
def test_localfaas_knows_nothing_of_movies(path):
    assert not {n for n in _imports(path) if n.split(".")[0] in ("movierec", "scripts", "functions")}
    assert "movie" not in path.read_text().lower()


@pytest.mark.parametrize("package", ["scripts", "movierec", "functions", "localfaas", "bench", "gateway",
                                     "monitoring", "minio"])
def test_product_code_never_imports_tests(package):
    offenders = [str(p.relative_to(ROOT)) for p in _modules(package)
                 if any(n == "tests" or n.startswith("tests.") for n in _imports(p))]
    assert not offenders


@pytest.mark.parametrize("package", ["movierec", "localfaas", "scripts", "functions"])
def test_modules_stay_readable_or_say_why_not(package):
    too_long = []
    for path in _modules(package):
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "Size:" not in doc:
            too_long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not too_long, f"split these or state the reason in a 'Size:' line of the header: {too_long}"


@pytest.mark.parametrize("package", ["movierec", "movierec/adapters", "movierec/batches", "movierec/release",
                                     "localfaas", "scripts", "functions", "gateway", "monitoring", "minio",
                                     "bench", "template/python3-http-debian"])
def test_each_package_says_what_it_owns_and_must_not_touch(package):
    folder = ROOT / package
    texts = [(folder / name).read_text() for name in ("README.md", "__init__.py") if (folder / name).exists()]
    assert texts, f"{package} has neither README.md nor __init__.py"
    header = "\n".join(texts)
    assert "Owns" in header and "Must not touch" in header, f"{package}: say what it Owns / Must not touch"
