"""minio/create_buckets.py, run as the operator runs it (`python minio/create_buckets.py`), against
moto's real S3 server over HTTP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from tests.test_store_backends import ACCESS_KEY, SECRET_KEY

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "minio" / "create_buckets.py"
PRINCIPAL = "arn:aws:iam::123456789012:user/movierec-functions"


@pytest.fixture
def client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


@pytest.fixture
def admin_secrets(tmp_path) -> Path:
    (tmp_path / "s3-admin-access-key").write_text(ACCESS_KEY + "\n")
    (tmp_path / "s3-admin-secret-key").write_text(SECRET_KEY + "\n")
    return tmp_path


def create_buckets(*args: str, endpoint: str | None, secrets_dir: Path | None = None,
                   cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "SECRETS_DIR", "PYTHONPATH"))}
    if endpoint:
        env["S3_ENDPOINT_URL"] = endpoint
    if secrets_dir:
        env["SECRETS_DIR"] = str(secrets_dir)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def expected_policy(bucket: str) -> dict:
    policy = json.loads((ROOT / "minio" / "policy-functions.json").read_text().replace("${BUCKET}", bucket))
    for statement in policy["Statement"]:
        statement["Principal"] = {"AWS": [PRINCIPAL]}
    return policy


def test_minio_is_not_a_python_package_so_it_cannot_shadow_the_minio_client():
    assert not (ROOT / "minio" / "__init__.py").exists()
    assert not list((ROOT / "minio").glob("*/__init__.py"))


def test_the_command_creates_the_bucket_with_versioning_and_the_functions_policy(
        s3_endpoint, client, admin_secrets, tmp_path):
    bucket = f"movierec-{uuid.uuid4().hex[:8]}"
    # Run from another directory: the script finds the policy template and movierec by itself.
    result = create_buckets("--bucket", bucket, "--versioning", "--principal", PRINCIPAL,
                            endpoint=s3_endpoint, secrets_dir=admin_secrets, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"created bucket {bucket}", "enabled versioning",
                                          f"applied bucket policy for {PRINCIPAL}"]
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"]) == expected_policy(bucket)


def test_the_command_run_twice_changes_nothing_the_second_time(s3_endpoint, admin_secrets):
    bucket = f"movierec-{uuid.uuid4().hex[:8]}"
    args = ("--bucket", bucket, "--versioning", "--principal", PRINCIPAL)
    assert create_buckets(*args, endpoint=s3_endpoint, secrets_dir=admin_secrets).returncode == 0
    again = create_buckets(*args, endpoint=s3_endpoint, secrets_dir=admin_secrets)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"bucket {bucket} already set up"


def test_the_functions_policy_grants_no_delete_and_only_the_three_prefixes():
    policy = expected_policy("movierec")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert not any("Delete" in a for a in actions)
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::movierec", "arn:aws:s3:::movierec/data/*",
                         "arn:aws:s3:::movierec/models/*", "arn:aws:s3:::movierec/releases/*"}


def test_the_command_without_an_endpoint_says_so_in_one_line(admin_secrets):
    result = create_buckets(endpoint=None, secrets_dir=admin_secrets)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: S3_ENDPOINT_URL is not set (e.g. http://127.0.0.1:9000 for MinIO)"


def test_the_command_without_admin_credentials_says_which_ones_it_looked_for(s3_endpoint):
    result = create_buckets(endpoint=s3_endpoint, secrets_dir=None)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: no admin credentials: secret files s3-admin-access-key")


def test_an_unreachable_endpoint_gives_one_line_naming_it(admin_secrets):
    from scripts._proc import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    result = create_buckets(endpoint=endpoint, secrets_dir=admin_secrets)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: S3 endpoint {endpoint}:")
