"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cai_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(
            "cai_request_seconds", "Request latency by route", ["route"], buckets=_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "cai_stage_seconds",
            "Wrapper stage latency (initial, judge, critique, revision)",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("cai_tokens", "Tokens used, by kind", ["kind"], registry=r)
        self.revisions = Counter("cai_revisions", "Critique/revision rounds run", registry=r)
        self.revised = Counter("cai_revised_answers", "Answers changed by the revision loop", registry=r)
        self.blocks = Counter("cai_blocks", "Answers replaced by the refusal", registry=r)
        self.upstream_errors = Counter(
            "cai_upstream_errors", "Upstream model failures by reason", ["reason"], registry=r
        )
        self.rejected = Counter(
            "cai_rejected", "Requests rejected before work (auth, size, load)", ["reason"], registry=r
        )
        self.in_flight = Gauge("cai_in_flight", "Requests being processed", registry=r)
