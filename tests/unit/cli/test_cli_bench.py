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
    assert skipped(parse("--skip", "kafka", "--skip", "ingest, replication", "--skip", "tracing,replicas")) == set(
        PHASES
    )


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
            "replication": {"meshgate_live_events_per_s": 27_000, "meshgate_live_publish_events_per_s": 30_000,
                            "ratio_live_rate": 0.4, "meshgate_half_own_rate_p99_ms": 30.0,
                            "ratio_catchup_rate": 0.45, "meshgate_gateway_peak_rss_mb": {"a": 90.0, "b": 160.0},
                            "meshgate_catchup_cpu_us_per_event": {"gateway a": 6.0, "gateway b": 8.5,
                                                                  "nats-server a": 3.0, "nats-server b": 11.0}},
            "kafka": {"ratio_stream_100": 0.55, "replication": {"kafka_to_nats_catchup": {"events_per_s": 21_000},
                                                                "nats_to_kafka_catchup": {"events_per_s": 9_000}}},
            "tracing": {"ratio_0_01_stream_ratio_to_off": 0.97},
            "replicas": {"events_share": [1.0, 0.0], "events_imbalance": 1.0, "partitions": None,
                         "note": "no partitions"},
        }
    )  # fmt: skip
    assert s["met"] == {
        "live_replication_ratio": True,
        "catchup_ratio": True,
        "catchup_cpu_us_per_event_gateways": True,
        "catchup_cpu_us_per_event_destination_nats": False,
        "half_own_rate_p99_ms": False,
        "kafka_ingest_ratio": True,
        "kafka_to_nats_catchup_events_per_s": True,
        "nats_to_kafka_catchup_events_per_s": False,
        "tracing_cost_1pct": True,
        "max_gateway_peak_rss_mb": False,
        "replicas_imbalance": False,
    }
    assert s["live_replication_ratio"] == 0.9 and s["live_anchor_ratio"] == 0.4
    assert s["catchup_cpu_us_per_event_gateways"] == 14.5 and s["tracing_cost_1pct"] == 0.03
    assert s["max_gateway_peak_rss_mb"] == 160.0
    assert s["not_measured"] == {"replicas_partitions": "no partitions"}


def test_every_target_is_in_the_summary_and_says_why_when_not_measured() -> None:
    from meshgate.bench.mesh_bench import TARGETS, summarize

    s = summarize({"kafka": {"skipped": "--skip kafka"}, "tracing": {"skipped": "failed: OSError: no port"}})
    assert set(s["met"]) == set(TARGETS) == set(s["targets"])
    assert all(key in s and s[key] is None for key in TARGETS)
    assert s["not_measured"]["kafka_ingest_ratio"] == "kafka phase skipped: --skip kafka"
    assert s["not_measured"]["tracing_cost_1pct"] == "tracing phase skipped: failed: OSError: no port"
    assert s["not_measured"]["replicas_imbalance"] == "not measured in this run"


def test_quick_shortens_what_was_not_given() -> None:
    from meshgate.cli._bench import apply_quick

    args = parse("--quick", "--backlog", "1000")
    apply_quick(args)
    assert (args.seconds, args.backlog, args.kafka_backlog) == (2.0, 1000, 20_000)
    plain = parse()
    apply_quick(plain)
    assert (plain.seconds, plain.backlog) == (5.0, 200_000)
    # Given explicitly, a value equal to the default still wins over --quick.
    explicit = parse("--quick", "--seconds", "5")
    apply_quick(explicit)
    assert (explicit.seconds, explicit.backlog) == (5.0, 50_000)


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


def test_the_benches_find_the_embedded_broker_in_a_gateway_log() -> None:
    # The replication phases read the embedded nats-server's URL and pid from the gateway's
    # log; the line names the monitoring URL too, since the first-run work.
    from meshgate.bench.replication_bench import _EMBEDDED_URL

    for line, url, pid in (
        (
            b"2026-12-06 23:37:33,273 INFO meshgate.brokers.embedded._server: embedded NATS meshgate-b ready at "
            b"nats://127.0.0.1:41369, monitoring http://127.0.0.1:32843 (pid 808, data /tmp/b, sync every 2 min)",
            b"nats://127.0.0.1:41369",
            b"808",
        ),
        (b"embedded NATS a ready at nats://127.0.0.1:4222 (pid 9, data d)", b"nats://127.0.0.1:4222", b"9"),
    ):
        found = _EMBEDDED_URL.search(line)
        assert found is not None and found.groups() == (url, pid)


def test_the_tracing_cost_is_the_mean_of_alternating_rounds_with_its_spread() -> None:
    from meshgate.bench.mesh_bench import summarize
    from meshgate.bench.tracing_cost import RatioStats

    # Off and 1 % take turns; a neighbour's burst in round 2 costs both alike.
    stats = RatioStats.of([60_000, 30_000, 62_000], [57_000, 28_800, 59_520])
    assert [round(x, 3) for x in stats.rounds] == [0.95, 0.96, 0.96]
    assert round(stats.mean, 3) == 0.957 and round(stats.spread, 3) == 0.01
    # A round without a figure (NaN) is left out rather than making the mean NaN.
    assert RatioStats.of([60_000, 60_000], [float("nan"), 57_000]).rounds == [0.95]
    s = summarize(
        {
            "tracing": {
                "ratio_0_01_stream_ratio_to_off": 0.957,
                "ratio_0_01_stream_ratio_rounds": [0.95, 0.96, 0.96],
                "ratio_0_01_stream_ratio_spread": 0.01,
                "off_stream_cpu_us_per_event": 20.5,
                "ratio_0_01_stream_cpu_us_per_event": 21.4,
            }
        }
    )
    assert s["tracing_cost_1pct"] == 0.043 and s["met"]["tracing_cost_1pct"] is True
    assert s["tracing_1pct_ratio_rounds"] == [0.95, 0.96, 0.96] and s["tracing_1pct_ratio_spread"] == 0.01
    assert s["tracing_cpu_us_per_event"] == {"off": 20.5, "1%": 21.4} and s["tracing_cpu_cost_1pct"] == 0.044
