"""Monitoring of the stack: the Prometheus config renderer and the alert rules (see README.md).

Owns: which series Prometheus keeps and from whom (the scrape config `render.py` writes: the
gateway's own job, the Pushgateway limited to the batch jobs' own metrics), the alert rules, the
Grafana dashboards. Must not touch: starting processes (scripts/stack.py), the release policy.
"""
