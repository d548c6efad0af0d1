"""Create the project's bucket on MinIO (or any S3 endpoint) through the S3 API. Idempotent.

Owns: the bucket, its versioning setting and its bucket policy. Must not touch objects in it.

- bucket `S3_BUCKET` (default `movierec`), holding `data/`, `models/`, `releases/`;
- optional versioning (`--versioning`): a second line of defence for write-once objects;
- a bucket policy rendered from `minio/policy-functions.json` for the functions' principal
  (`--principal`, e.g. `arn:aws:iam:::user/movierec-functions`; MinIO also takes the same JSON as a
  user policy with `mc admin policy create` — see README.md).

Endpoint from `S3_ENDPOINT_URL`; admin credentials from the secret files `s3-admin-access-key` /
`s3-admin-secret-key` (SECRETS_DIR) or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
Run by path (an operator command, not a module: `minio/` is deliberately not a
Python package, so it cannot shadow the PyPI `minio` client):
`python minio/create_buckets.py [--bucket movierec] [--versioning] [--principal ARN]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Run as a script, Python puts minio/ on the path, not the repository root that holds movierec.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POLICY_TEMPLATE = Path(__file__).resolve().parent / "policy-functions.json"


def render_policy(bucket: str, principal: str | None = None) -> dict:
    policy = json.loads(POLICY_TEMPLATE.read_text().replace("${BUCKET}", bucket))
    if principal:
        for statement in policy["Statement"]:
            statement["Principal"] = {"AWS": [principal]}
    return policy


def client_from_env(env: dict[str, str]):
    import boto3
    from botocore.config import Config

    from movierec.store import read_secret

    endpoint = env.get("S3_ENDPOINT_URL", "").strip()
    if not endpoint:
        raise SystemExit("error: S3_ENDPOINT_URL is not set (e.g. http://127.0.0.1:9000 for MinIO)")
    access = read_secret("s3-admin-access-key", env) or env.get("AWS_ACCESS_KEY_ID")
    secret = read_secret("s3-admin-secret-key", env) or env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise SystemExit("error: no admin credentials: secret files s3-admin-access-key/s3-admin-secret-key "
                         "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                        region_name=env.get("S3_REGION", "us-east-1"),
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))


def setup(client, bucket: str, versioning: bool = False, principal: str | None = None) -> list[str]:
    """Bring the bucket to the wanted state; returns what was done (empty if nothing changed)."""
    from botocore.exceptions import ClientError

    done = []
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        try:
            client.create_bucket(Bucket=bucket)
            done.append(f"created bucket {bucket}")
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    if versioning:
        status = client.get_bucket_versioning(Bucket=bucket).get("Status")
        if status != "Enabled":
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            done.append("enabled versioning")
    if principal:
        wanted = render_policy(bucket, principal)
        try:
            current = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
        except ClientError:
            current = None
        if current != wanted:
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(wanted))
            done.append(f"applied bucket policy for {principal}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python minio/create_buckets.py", description=__doc__.split("\n")[0])
    parser.add_argument("--bucket", default=os.environ.get("S3_BUCKET", "movierec"))
    parser.add_argument("--versioning", action="store_true")
    parser.add_argument("--principal", default=os.environ.get("S3_FUNCTIONS_PRINCIPAL"))
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        done = setup(client_from_env(os.environ), args.bucket, args.versioning, args.principal)
    except (BotoCoreError, ClientError) as e:
        print(f"error: S3 endpoint {os.environ.get('S3_ENDPOINT_URL')}: {e}", file=sys.stderr)
        return 1
    print("\n".join(done) if done else f"bucket {args.bucket} already set up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
