"""Grafana dashboards as code, their provisioning (faasd, Kubernetes) and the panel-query reader."""
