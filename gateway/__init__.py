"""The public entry in front of the OpenFaaS gateway: the nginx canary split (see README.md).

Owns: rendering nginx.conf from the canary rule. Must not touch: the canary rule itself
(`movierec.canary`), function code.
"""
