"""The backing servers go away: Redis restarted empty, Postgres stopped for seconds."""

from __future__ import annotations

import random
import time

import pytest

from tests.reliability.nemesis import Nemesis, submit_mix
from tests.reliability.scenario import Scenario, scaled

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_redis_restarted_empty_loses_no_accepted_task(scenario: Scenario) -> None:
    cluster, redis = scenario.cluster, scenario.servers.redis
    cluster.start_workers(3, concurrency=2)
    cluster.start_sweeper()
    ledger = scenario.ledger("redis-restart")
    rng = random.Random(4)

    def restart_redis_empty() -> None:
        at = time.time()
        # Alternate a crash and a clean stop; neither persists anything, so it comes back empty.
        if len(ledger.faults) % 2:
            redis.kill()
        else:
            redis.stop()
        time.sleep(rng.uniform(0.5, 2.0))
        redis.start()
        back = time.time()
        ledger.fault("redis-restart", at, back)
        ledger.probe(since=back)

    rounds = scaled(3)
    nemesis = Nemesis(restart_redis_empty, rounds, pause=(1.5, 3.0), rng=rng, first_pause=1.5)
    nemesis.start()
    submit_mix(ledger, scaled(300), rng, spread=rounds * 6.0)
    nemesis.finish()
    ledger.settle(timeout=120)
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert len(verdict.probes) == rounds, "the service did not serve again after a restart"
    assert all(w.running() for w in cluster.workers), "a worker died with Redis"


def test_postgres_outage_answers_503_and_recovers(scenario: Scenario) -> None:
    cluster, postgres = scenario.cluster, scenario.servers.postgres
    workers = cluster.start_workers(3, concurrency=2)
    sweeper = cluster.start_sweeper()
    ledger = scenario.ledger("postgres-outage")
    rng = random.Random(5)
    during: list[int] = []

    def stop_postgres() -> None:
        at = time.time()
        postgres.stop()
        client = ledger.client()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            # Reads fail cleanly too while the database is away.
            during.append(client.get("/api/v1/tasks", headers=ledger.headers).status_code)
            time.sleep(0.25)
        postgres.start()
        back = time.time()
        ledger.fault("postgres-stop", at, back)
        ledger.probe(since=back)

    rounds = scaled(2)
    nemesis = Nemesis(stop_postgres, rounds, pause=(1.5, 2.5), rng=rng, first_pause=1.5)
    nemesis.start()
    # About half of these meet an outage and are refused with 503; the rest must all run.
    submit_mix(ledger, scaled(500), rng, spread=rounds * 7.0)
    nemesis.finish()
    ledger.settle(timeout=120)
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert during and set(during) == {503}, f"while Postgres was down the API answered {during}"
    assert ledger.responses[503] > 0, "no submission met the outage: the scenario proved nothing"
    assert len(verdict.probes) == rounds, "the service did not serve again after the outage"
    # No crash loop: the very processes started before the outages are still the ones serving.
    assert all(w.running() and len(w.incarnations) == 1 for w in workers)
    assert sweeper.poll() is None, "the sweeper died with Postgres"
