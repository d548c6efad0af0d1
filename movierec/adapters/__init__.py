"""Adapters: everything that talks to a service, behind the protocols the domain defines.

Owns: the OpenFaaS gateway API client (`gateway`), Prometheus queries (`prometheus`), Pushgateway
pushes (`pushgateway`), notifications by webhook and SMTP (`notify`), the S3 object store
(`s3store`), opening the configured store (`stores.open_store`), ingest's Kafka consumer loop and
CLI (`kafka_ingest`) and its log-epoch checks (`kafka_epochs`), the release controller's Pushgateway figures (`release_metrics`), the
handlers' replies (`replies`) and the one retry helper (`retry`). Each adapter reads its
configuration from `movierec.settings` and turns its service's failures into its own
`movierec.errors.Unavailable` subclass with a one-line message naming the endpoint.

Must not touch: decisions. What to deploy, which query means what, when to notify: the domain
(`movierec/`) decides; handlers (`functions/`) and CLIs (`scripts/`) compose the two. Nothing in
the domain imports this package (tests/test_layout.py checks the import graph).
"""
