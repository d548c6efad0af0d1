"""Monitoring of the stack: the Prometheus config renderer and the alert rules (see README.md)."""
