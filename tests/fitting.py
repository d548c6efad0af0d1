"""A fitted serving model for tests that need a model, not a measure of its quality.

The same two production steps the training job takes (`movierec.training.fit_svd`, then
`movierec.model.build_model`, as in `movierec.trainjob.fit_and_evaluate`), on the whole table:
no holdout, so every user of the table is known to the model. Tests that judge quality go
through `fit_and_evaluate` itself.
"""
from __future__ import annotations

from movierec.model import RecommenderModel, build_model
from movierec.ratings import RatingsTable
from movierec.training import SVDParams, fit_svd


def train_model(table: RatingsTable, params: SVDParams) -> RecommenderModel:
    """A model fitted on `table` (deduplicated here); seen = the table's (user, movie) pairs."""
    table = table.dedupe()
    return build_model(fit_svd(table, params), table, params=params.as_dict())
