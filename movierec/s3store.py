"""Merge shim, to be deleted by the integrator: moved to `movierec.adapters.s3store`. Branches that
still import `movierec.s3store` keep working until their imports are rewritten."""
from movierec.adapters.s3store import S3Store  # noqa: F401
