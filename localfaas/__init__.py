"""localfaas: a local OpenFaaS-compatible runtime for machines without Docker or containerd.

It runs whatever an OpenFaaS stack.yml holds, the way OpenFaaS would, so the same file can be
deployed unchanged with faas-cli later:
- `stackfile`: reads stack.yml like faas-cli (env substitution, validation);
- `build`: makes each function's build context like `faas-cli build --shrinkwrap`;
- `supervisor`: runs each function as replica processes (readiness, restarts, rolling updates);
- `gateway`: the gateway's HTTP API, proxying, basic auth and `gateway_*` metrics;
- `secretstore`: the secrets behind `/system/secrets` (private files, name rules);
- `cron`: cron-connector, scheduling functions from their annotations (with the `cron-token`);
- `validate`: the name, path and process rules of the real providers, applied before any use.

Owns: running a stack locally as OpenFaaS would, inside its state and build folders.
Must not touch: anything outside those folders (nothing is deleted or run from elsewhere);
this package knows nothing of what the functions do; it must never import the domain code.
"""
