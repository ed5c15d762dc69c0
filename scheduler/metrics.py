"""Prometheus metrics, one registry per daemon (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.submissions = Counter("insight_submissions_total", "bulk_queue attempts by outcome and HTTP status",
                                   ["outcome", "status_code"], registry=r)
        self.latency = Histogram("insight_submission_latency_seconds", "bulk_queue request latency",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("insight_requests_in_flight", "bulk_queue requests in flight", registry=r)
        self.limiter_wait = Gauge("insight_rate_limiter_wait_seconds_total",
                                  "time spent waiting for the rate limit", registry=r)
        self.chunks = Gauge("insight_chunks", "chunks by status", ["status"], registry=r)
        self.contacts = Gauge("insight_contacts", "contacts by status", ["status"], registry=r)
        self.campaigns = Gauge("insight_campaigns", "campaigns by status", ["status"], registry=r)
        self.callbacks = Counter("insight_callbacks_total", "result_url callbacks received, by call status "
                                 "or by why they were refused", ["status"], registry=r)
        self.breaker_open = Gauge("insight_plum_breaker_open", "1 while the account's circuit breaker is open "
                                  "(Plum failing every request): no new requests, one probe at a time", ["account"],
                                  registry=r)
        self.breaker_probes = Counter("insight_plum_breaker_probes_total", "probe requests sent while the "
                                      "circuit breaker was open", ["account"], registry=r)
        self.outages = Counter("insight_plum_outages_total", "times the circuit breaker opened", ["account"],
                               registry=r)
        self.unwritten = Gauge("insight_answers_unwritten", "answers from Plum waiting for the database "
                               "(kept in order and in the journal)", registry=r)
        self.last_tick = Gauge("insight_last_tick_timestamp_seconds", "Unix time of the last tick", registry=r)

    def set_counts(self, gauge: Gauge, counts: dict[str, int]) -> None:
        gauge.clear()
        for status, count in counts.items():
            gauge.labels(status=str(status)).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
