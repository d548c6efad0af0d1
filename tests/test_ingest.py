"""Ingest's domain side: its configuration comes from the settings table, and its summary becomes
the `ingest_*` metric families (the run itself: tests/test_kafka_ingest.py)."""
from __future__ import annotations

import pytest

from movierec.errors import ConfigError, Unavailable
from movierec.events import REJECTION_REASONS
from movierec.ingest import METRICS_DOC, IngestConfig, IngestError, IngestSummary, summary_families
from movierec.metrics import render_text


def test_ingest_config_rejects_a_non_numeric_setting_in_one_line():
    with pytest.raises(ConfigError, match="INGEST_MAX_RECORDS must be an integer, got 'lots'"):
        IngestConfig.from_env({"INGEST_MAX_RECORDS": "lots"})


def test_ingest_config_reads_the_settings_table_blank_meaning_the_default():
    assert IngestConfig.from_env({}) == IngestConfig()
    cfg = IngestConfig.from_env({"KAFKA_TOPIC": "movielog7", "INGEST_MAX_SECONDS": " ", "PUSHGATEWAY_URL": "",
                                 "INGEST_BUILDER_PROCESS": "0", "INGEST_BATCH_RECORDS": "500"})
    assert (cfg.topic, cfg.max_seconds, cfg.pushgateway_url, cfg.builder_process, cfg.batch_records) == \
        ("movielog7", 120.0, "", False, 500)


def test_a_caller_s_bounds_override_the_environment_and_are_checked_too():
    cfg = IngestConfig.from_env({"INGEST_MAX_RECORDS": "10"}, max_records=3, max_seconds=None)
    assert (cfg.max_records, cfg.max_seconds) == (3, 120.0)
    with pytest.raises(ConfigError, match="must be positive"):
        IngestConfig.from_env({}, max_records=0)


def test_an_ingest_error_is_an_unavailable_dependency():
    assert issubclass(IngestError, Unavailable) and IngestError("x").status == 503


def test_the_summary_becomes_the_ingest_gauges_with_their_labels():
    summary = IngestSummary(topic="movielog1", group_id="g", records=12,
                            events={"watch": 7, "rate": 3, "recommendation": 1}, quarantined={"truncated": 1},
                            batches_written=2, lag={0: 4, 1: 0}, lag_total=4, duration_seconds=1.5)
    families = {f.name: f for f in summary_families(summary, now=1700000000.0)}
    assert set(families) == set(METRICS_DOC)
    assert all(f.doc == METRICS_DOC[name] for name, f in families.items())
    assert families["ingest_events"].samples == [(("watch",), 7.0), (("rate",), 3.0), (("recommendation",), 1.0)]
    assert len(families["ingest_quarantined"].samples) == len(REJECTION_REASONS)
    assert families["ingest_consumer_lag"].labels == ("topic", "partition")
    text = render_text(list(families.values()))
    assert 'ingest_consumer_lag{topic="movielog1",partition="0"} 4' in text
    assert 'ingest_quarantined{reason="truncated"} 1' in text
    assert "ingest_last_success_timestamp_seconds 1700000000" in text


def test_a_run_holds_its_group_s_lease_for_its_own_bound_plus_the_grace():
    assert IngestConfig.from_env({"INGEST_MAX_SECONDS": "45"}).lease_seconds == 105.0
    assert IngestConfig.from_env({"INGEST_MAX_SECONDS": "5", "INGEST_LEASE_GRACE": "2s"}).lease_seconds == 7.0
    with pytest.raises(ConfigError, match="INGEST_LEASE_GRACE must be a duration"):
        IngestConfig.from_env({"INGEST_LEASE_GRACE": "soon"})


def test_each_consumer_group_has_its_own_lease_whatever_characters_its_name_has():
    from movierec.ingest import ingest_lease_name

    assert ingest_lease_name("movierec-ingest") == "ingest/movierec-ingest"
    assert ingest_lease_name("team/a b") == "ingest/team_a_b"
    assert ingest_lease_name("..") == "ingest/_"


def test_log_epochs_and_resets_become_gauges_and_summary_fields():
    summary = IngestSummary(topic="movielog1", group_id="g", epochs={0: 2, 1: 1},
                            log_resets=[{"partition": 0, "epoch": 2, "reason": "topic id changed from a to b"}])
    families = {f.name: f for f in summary_families(summary, now=1.0)}
    assert families["ingest_log_epoch"].samples == [(("movielog1", "0"), 2.0), (("movielog1", "1"), 1.0)]
    assert families["ingest_log_resets"].samples == [(("movielog1",), 1.0)]
    as_dict = summary.as_dict()
    assert as_dict["epochs"] == {"0": 2, "1": 1} and as_dict["log_resets_total"] == 1
    assert as_dict["log_resets"][0]["reason"] == "topic id changed from a to b"
