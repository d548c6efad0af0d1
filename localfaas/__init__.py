"""localfaas: a local OpenFaaS-compatible runtime for machines without Docker or containerd.

It runs whatever an OpenFaaS stack.yml holds, the way OpenFaaS would, so the same file can be
deployed unchanged with faas-cli later:
- `stackfile`: reads stack.yml like faas-cli (env substitution, validation);
- `build`: makes each function's build context like `faas-cli build --shrinkwrap`;
- `images`: immutable, content-addressed snapshots of build contexts ("images" with a sha256
  digest) that replicas run from, and their garbage collection;
- `functionconfig`: a deployment's settings (`FunctionConfig`, FunctionDeployment JSON, scaling
  labels, durations) and the deploy errors;
- `records`: what was deployed, one record per function in the state folder, restored on restart;
- `replica`: one replica process (start from its image, adoption after a restart, readiness,
  liveness, drain and stop);
- `replicastate`: the replica state file and knowing a recorded process again (start time, pidfd):
  replicas outlive a killed runtime, as containers outlive their provider;
- `logs`: the replicas' output (one timestamped line per output line, per instance) and
  `/system/logs` (NDJSON, as faas-provider serves it);
- `supervisor`: each deployed function's replicas (deploy, scaling and scale from zero, rolling
  updates, restarts, the secrets folder each function mounts, records and image collection);
- `gateway`: the gateway's HTTP app, basic auth and the upstream sessions, wiring together
  `proxy` (`/function/*`, `/async-function/*`), `system_api` (`/system/*`), `secrets_api`
  (`/system/secrets`), `logs`, `metrics` (`gateway_*`), `credentials` (the basic-auth files) and
  `replies` (errors as HTTP statuses); the same API as a provider under `/provider/`;
- `dataplane`: the nginx data plane (LOCALFAAS_DATA_PLANE=nginx): nginx on the gateway's port
  calls ready replicas itself and hands everything else to the gateway app on a loopback port;
  its configuration follows the ready replicas (reloads, drain holds) and it outlives a killed
  runtime; `calllog` reads the calls it answered into the gateway metrics;
- `secretstore`: the secrets behind `/system/secrets` (private files, name rules);
- `cron`: cron-connector, scheduling functions from their annotations (with the `cron-token`);
- `validate`: the name, path and process rules of the real providers, applied before any use.

Owns: running a stack locally as OpenFaaS would, inside its state and build folders.
Must not touch: anything outside those folders (nothing is deleted or run from elsewhere);
this package knows nothing of what the functions do; it must never import the domain code.
"""
