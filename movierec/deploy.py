"""Merge shim, to be deleted by the integrator: moved to `movierec.adapters.gateway`. Branches that
still import `movierec.deploy` keep working until their imports are rewritten."""
from movierec.adapters.gateway import (  # noqa: F401
    DeployError,
    FunctionNotFoundError,
    GatewayClient,
    GatewayDeployer,
    GatewayError,
    deployment_from_status,
)
