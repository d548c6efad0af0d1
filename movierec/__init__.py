"""movierec: the domain core of the movie recommendation service.

Owns: stream events (`events`), synthetic data (`synthetic`), training and evaluation
(`training`), the model artifact and vectorised scoring (`model`), the object store
(`store`), the model registry (`registry`), the batch format under `data/` (`batches`),
ingestion's config, summary, log epochs and metrics (`ingest`), leases in the store (`lease`), canary membership (`canary`), the release
(`release/`: checks as data, PromQL templates, state, online quality, controller), release drills
(`drills`) and the protocols of the services it is given (`ports`).

Must not touch: HTTP, OpenFaaS, the gateway or process management. Functions in
`functions/` are thin adapters over this package; it is copied into each function's build
context by `configuration.copy` in stack.yml.
"""
