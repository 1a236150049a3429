"""``meshgate bench``'s command line (what it measures is bench/'s; nothing is timed here)."""

from __future__ import annotations

import argparse

import pytest

from meshgate.cli import build_parser, main
from meshgate.cli._bench import PHASES, skipped


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_defaults_are_the_issue_s_run() -> None:
    args = parse()
    assert (args.seconds, args.backlog, args.skip) == (5.0, 200_000, [])
    assert skipped(args) == set()


def test_skip_takes_repeats_and_commas() -> None:
    assert skipped(parse("--skip", "kafka", "--skip", "ingest, replication")) == set(PHASES)


def test_unknown_phase_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--skip", "kafak"]) == 2
    assert "unknown phase(s) to skip: kafak" in capsys.readouterr().err


def test_bounds_are_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--seconds", "0"]) == 2
    assert "--seconds must be > 0" in capsys.readouterr().err


def test_the_harness_summarizes_against_the_targets() -> None:
    from meshgate.bench.mesh_bench import summarize

    s = summarize(
        {
            "ingest": {"stream_100_events_per_s": 30_000, "raw_events_per_s": 45_000, "ratio_stream_100": 0.66,
                       "gateway_peak_rss_mb": 70.0},
            "replication": {"ratio_live_rate": 0.4, "meshgate_half_anchor_rate_p99_ms": 30.0,
                            "ratio_catchup_rate": 0.45, "meshgate_gateway_peak_rss_mb": {"a": 90.0, "b": 160.0}},
            "kafka": {"skipped": "no adapter"},
        }
    )  # fmt: skip
    assert s["met"] == {
        "ingest_ratio": True,
        "live_replication_ratio": False,
        "half_load_p99_ms": True,
        "catchup_ratio": False,
        "max_gateway_peak_rss_mb": False,
    }
    assert s["max_gateway_peak_rss_mb"] == 160.0


def test_the_summary_carries_the_kafka_replication_figures() -> None:
    from meshgate.bench.mesh_bench import summarize

    s = summarize(
        {
            "kafka": {
                "ratio_stream_100": 0.2,
                "gateway_peak_rss_mb": 120.0,
                "replication": {
                    "kafka_to_nats_live": {"window_events_per_s": 4000},
                    "nats_to_kafka_catchup": {"events_per_s": 5000},
                    "gateway_peak_rss_mb": {"k": 130.0, "n": 155.0},
                },
            }
        }
    )
    assert s["kafka_to_nats_live_events_per_s"] == 4000 and s["kafka_to_nats_catchup_events_per_s"] is None
    assert s["nats_to_kafka_catchup_events_per_s"] == 5000
    assert s["gateway_peak_rss_mb"]["kafka replication n"] == 155.0
    assert s["max_gateway_peak_rss_mb"] == 155.0


def test_kafka_backlog_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse().kafka_backlog == 50_000
    assert main(["bench", "--kafka-backlog", "0"]) == 2
    assert "--kafka-backlog >= 1" in capsys.readouterr().err
