"""The public entry in front of the OpenFaaS gateway: the nginx canary split (see README.md)."""
