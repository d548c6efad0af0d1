"""Merge shim, to be deleted by the integrator: moved to `movierec.adapters.prometheus`. Branches that
still import `movierec.prometheus` keep working until their imports are rewritten."""
from movierec.adapters.prometheus import PrometheusClient, PrometheusError  # noqa: F401
