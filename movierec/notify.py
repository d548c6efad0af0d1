"""Merge shim, to be deleted by the integrator: moved to `movierec.adapters.notify`. Branches that
still import `movierec.notify` keep working until their imports are rewritten."""
from movierec.adapters.notify import Notifier  # noqa: F401
