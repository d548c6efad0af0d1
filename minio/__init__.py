"""MinIO (S3) setup for production: bucket, policy, faasd compose snippet."""
