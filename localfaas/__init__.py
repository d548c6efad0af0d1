"""localfaas: a local OpenFaaS-compatible runtime for machines without Docker or containerd.

It runs whatever an OpenFaaS stack.yml holds, the way OpenFaaS would, so the same file can be
deployed unchanged with faas-cli later:
- `stackfile`: reads stack.yml like faas-cli (env substitution, validation);
- `build`: makes each function's build context like `faas-cli build --shrinkwrap`;
- `functionconfig`: a deployment's settings (`FunctionConfig`, durations) and the deploy errors;
- `replica`: one replica process (start, readiness, liveness, drain and stop) and the replica
  state file;
- `supervisor`: each deployed function's replicas (deploy, scaling, rolling updates, restarts,
  the secrets folder each function mounts);
- `gateway`: the gateway's HTTP app, basic auth and the upstream session, wiring together
  `proxy` (`/function/*`, `/async-function/*`), `system_api` (`/system/*`), `metrics`
  (`gateway_*`), `credentials` (the basic-auth files) and `replies` (errors as HTTP statuses);
- `secretstore`: the secrets behind `/system/secrets` (private files, name rules);
- `cron`: cron-connector, scheduling functions from their annotations.

Owns: running a stack's functions locally behind an OpenFaaS-compatible gateway.
Must not touch: the domain code: this package knows nothing of what the functions do and must
never import it.
"""
