"""The Function custom resources of stack.yml, shaped as `faas-cli generate --api=openfaas.com/v1` makes
them, and the schema they must satisfy: for clusters that deploy functions as CRs (the OpenFaaS
operator) and for checking offline that what the nginx split proxies to exists.

`faas-cli generate` reads stack.yml with env substitution, merges each function's
`environment_file` over its inline environment (the file wins), and writes one `Function` per
function: metadata {name, namespace}, spec {name, image, environment, labels, annotations,
limits, requests, constraints, secrets, readOnlyRootFilesystem}, empty fields left out. Rendering
uses localfaas.stackfile, which does the same substitution and merge, with DEPLOY_TARGET=kubernetes
unless told otherwise, so the CRs carry env/kubernetes.yml's in-cluster addresses.

`FUNCTION_SCHEMA` is the CRD's openAPIV3Schema (faas-netes `artifacts/crds/openfaas.com_functions.yaml`,
version v1) as a JSON schema, made strict: an unknown field is an error, as the API server's
structural pruning would silently drop it.

Owns: `function_crs`, `FUNCTION_SCHEMA`, the CLI. Must not touch: deploying anything, the stack
file's contents (stack.yml), the nginx config (render.py).

CLI:
    python -m gateway.functions [--stack stack.yml] [--target kubernetes] [-n openfaas-fn] [-o FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
API_VERSION = "openfaas.com/v1"
DEFAULT_NAMESPACE = "openfaas-fn"

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_RESOURCES = {"type": "object", "additionalProperties": False,
              "properties": {"cpu": {"type": "string"}, "memory": {"type": "string"}}}
FUNCTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "Function"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                             "maxLength": 63},
                                    "namespace": {"type": "string"}}},
        "spec": {
            "type": "object",
            "required": ["image", "name"],
            "additionalProperties": False,
            "properties": {
                "annotations": _STRINGS,
                "constraints": {"type": "array", "items": {"type": "string"}},
                "environment": _STRINGS,
                "handler": {"type": "string"},
                "image": {"type": "string", "minLength": 1},
                "labels": _STRINGS,
                "limits": _RESOURCES,
                "name": {"type": "string"},
                "readOnlyRootFilesystem": {"type": "boolean"},
                "requests": _RESOURCES,
                "secrets": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}


def function_crs(stack_path: str | os.PathLike[str] = REPO / "stack.yml", target: str = "kubernetes",
                 namespace: str = DEFAULT_NAMESPACE, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One Function object per function of the stack, in the stack's order."""
    from localfaas.stackfile import load_stack

    environment = dict(os.environ if env is None else env)
    environment["DEPLOY_TARGET"] = target
    stack = load_stack(stack_path, env=environment)
    out = []
    for fn in stack.functions.values():
        spec: dict[str, Any] = {"name": fn.name, "image": fn.image}
        for key, value in (("environment", fn.environment), ("labels", fn.labels),
                           ("annotations", fn.annotations), ("limits", fn.limits), ("requests", fn.requests),
                           ("constraints", fn.constraints), ("secrets", fn.secrets)):
            if value:
                spec[key] = dict(value) if isinstance(value, dict) else list(value)
        if fn.readonly_root_filesystem:
            spec["readOnlyRootFilesystem"] = True
        out.append({"apiVersion": API_VERSION, "kind": "Function",
                    "metadata": {"name": fn.name, "namespace": namespace}, "spec": spec})
    return out


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.functions", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", default=str(REPO / "stack.yml"))
    parser.add_argument("--target", default="kubernetes", help="the env/<target>.yml overlay (default kubernetes)")
    parser.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("-o", "--output", default="-", help="file to write, - for stdout (default)")
    args = parser.parse_args(argv)
    from localfaas.stackfile import StackError

    try:
        text = to_yaml(function_crs(args.stack, args.target, args.namespace))
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
