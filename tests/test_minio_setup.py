"""minio/setup.py against moto's real S3 server over HTTP."""
from __future__ import annotations

import json
import uuid

import boto3
import pytest

from minio.setup import main, render_policy, setup
from tests.test_store_backends import ACCESS_KEY, SECRET_KEY, s3_endpoint  # noqa: F401 (fixture)

PRINCIPAL = "arn:aws:iam::123456789012:user/movierec-functions"


@pytest.fixture
def client(s3_endpoint):  # noqa: F811
    return boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


def test_setup_creates_the_bucket_with_versioning_and_the_functions_policy(client):
    bucket = f"movierec-{uuid.uuid4().hex[:8]}"
    done = setup(client, bucket, versioning=True, principal=PRINCIPAL)
    assert done == [f"created bucket {bucket}", "enabled versioning", f"applied bucket policy for {PRINCIPAL}"]
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    policy = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    assert policy == render_policy(bucket, PRINCIPAL)


def test_setup_run_twice_changes_nothing_the_second_time(client):
    bucket = f"movierec-{uuid.uuid4().hex[:8]}"
    setup(client, bucket, versioning=True, principal=PRINCIPAL)
    assert setup(client, bucket, versioning=True, principal=PRINCIPAL) == []


def test_the_functions_policy_grants_no_delete_and_only_the_three_prefixes():
    policy = render_policy("movierec")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert not any("Delete" in a for a in actions)
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::movierec", "arn:aws:s3:::movierec/data/*",
                         "arn:aws:s3:::movierec/models/*", "arn:aws:s3:::movierec/releases/*"}


def test_setup_cli_reads_endpoint_and_admin_credentials_from_env_and_secret_files(
        s3_endpoint, client, tmp_path, monkeypatch, capsys):  # noqa: F811
    (tmp_path / "s3-admin-access-key").write_text(ACCESS_KEY)
    (tmp_path / "s3-admin-secret-key").write_text(SECRET_KEY)
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    bucket = f"movierec-{uuid.uuid4().hex[:8]}"
    assert main(["--bucket", bucket]) == 0
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert main(["--bucket", bucket]) == 0
    assert "already set up" in capsys.readouterr().out


def test_setup_cli_without_an_endpoint_says_so_in_one_line(monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    with pytest.raises(SystemExit, match="S3_ENDPOINT_URL is not set"):
        main([])
