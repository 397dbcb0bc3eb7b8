"""The benchmark's load generators drive a real tracker and validate its replies.

One second of each generator against our own servers; nothing here looks at
a rate or a latency, only that every reply was a valid announce or scrape.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from servers import REPO_ROOT, gunicorn, sidecar

sys.path.insert(0, str(REPO_ROOT))

from bench import loads
from bench.workload import make_workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory):
    return make_workload(Path(tmp_path_factory.mktemp("bench")), k=10, clients=200, tpc=2)


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
def test_wrk_announce_script_fills_then_gets_valid_peer_lists(workload):
    with gunicorn() as server:
        fill = loads.wrk(server.port, workload, 30, cpus=None, conns=4, prefill=True)
        assert fill.result["ok"] >= workload.peers
        for close in (False, True):
            run = loads.wrk(server.port, workload, 1, cpus=None, conns=4, close=close)
            assert run.result["ok"] > 0
            assert run.result["fail"] == 0
            assert run.result["avg_peers"] > 0


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
def test_wrk_page_script_gets_the_example_sites_page():
    with gunicorn("examples.flask_site.app:create_app()") as server:
        run = loads.wrk_page(server.port, "/torrents", 1, cpus=None, conns=2)
        assert run.result["ok"] > 0
        assert run.result["fail"] == 0
        missing = loads.wrk_page(server.port, "/no-such-page", 1, cpus=None, conns=1)
        assert missing.result["ok"] == 0 and missing.result["fail"] > 0  # a 404 is not a page


@pytest.mark.skipif(not shutil.which("gcc"), reason="gcc is not installed")
def test_udp_load_announces_and_scrapes_get_valid_replies(workload):
    with sidecar() as server:
        fill = loads.udp_load(server.port, workload, 30, cpus=None, prefill=True, inflight=8)
        assert fill.result["responses"] >= workload.peers
        for mode in ("announce", "scrape"):
            run = loads.udp_load(
                server.port, workload, 1, cpus=None, mode=mode, inflight=8, scrape_hashes=3
            )
            assert run.result["responses"] > 0
            assert run.result["malformed"] == 0
            assert run.result["bad_tid"] == 0
            assert run.result["errors"] == 0


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_cluster_lag_sees_other_nodes_changes_and_reads_redis_costs(tmp_path: Path) -> None:
    from argparse import Namespace

    from bench import cluster_lag

    got = cluster_lag.measure(Namespace(nodes=2, rate=400, seconds=1.5), tmp_path)
    assert got["deltas"] > 0  # node 1's announces reached node 0's observer through Redis
    assert got["published_rate"] > 0
    assert got["redis_evalsha_per_1k"] > 0 and got["redis_bytes_out_per_1k"] > 0


@pytest.mark.parametrize("distinct", [False, True])
def test_apply_cost_drives_the_real_stack_and_counts_the_answers(distinct: bool) -> None:
    from bench.apply_cost import one_run

    run = one_run(workers=2, rate=300, seconds=1.0, distinct=distinct, warmup=0)
    assert run["sent"] > 0
    assert 0 < run["answered"] <= run["sent"]  # the replies came back and were counted
