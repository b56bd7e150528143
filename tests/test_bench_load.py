"""`ltc-stream bench load --short`: every scenario of the load and fault suite, at CI size (about a
minute on two cores), must hold: no lost viewer, bounded queues, refusals with codes."""
from __future__ import annotations

import argparse
import json

import pytest

from ltc_stream.errors import ConfigError
from ltc_stream.server import bench_load

pytestmark = pytest.mark.slow


def test_short_suite_holds():
    results = bench_load.run_suite(short=True)
    assert set(results) == {"churn", "lockout", "flood", "fuzz", "slow_reader", "model_fault",
                            "capacity_shared", "capacity_per_viewer", "soak"}
    failed = {k: v for k, v in results.items() if not v["ok"]}
    assert not failed, json.dumps(failed, indent=1)[:3000]
    r = results
    assert r["churn"]["held"]["cycles_with_video"] == r["churn"]["load"]["cycles"]
    assert r["churn"]["resources"]["fds"] <= 2  # sockets and pipes of finished viewers are released
    assert r["lockout"]["held"]["attacker_sockets_admitted_at_once_max"] <= 2
    assert r["lockout"]["attacker_first_messages"].get("address_limit", 0) > 0
    assert r["lockout"]["lost"]["visitors_refused_or_closed"] == 0
    assert r["flood"]["held"]["flooder_closed_with"] == "too_many_errors"
    assert r["fuzz"]["lost"]["unexpected_replies"] == 0 and r["fuzz"]["load"]["examples"] >= 30
    assert r["slow_reader"]["held"]["outbox_max"] <= r["slow_reader"]["held"]["outbox_limit"]
    assert r["slow_reader"]["lost"]["messages_dropped"] > 0
    assert r["model_fault"]["held"]["faulty_viewer_told"] == ["stream_failed"]
    for key in ("capacity_shared", "capacity_per_viewer"):
        assert r[key]["held"]["fps_min"] >= 15.0 and r[key]["lost"]["viewers_below_16fps"] == 0
    assert r["soak"]["lost"]["viewers_closed"] == 0


def test_unknown_scenario_is_a_clear_error():
    parser = argparse.ArgumentParser()
    bench_load.add_arguments(parser)
    with pytest.raises(ConfigError, match="unknown"):
        bench_load.main(parser.parse_args(["--scenarios", "churn,stampede"]))
