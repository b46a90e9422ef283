"""The gateway's Prometheus metrics (`GET /metrics`): requests by status, latency, queue wait, batch sizes.

One registry per gateway replica (there is one). Ray Serve's own metrics (replica queue lengths, its
`serve_actual_batch_size` and batch wait times, per deployment) are exported by Ray's metrics agent on each node.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("icv_requests", "POST /v1/infer requests answered, by HTTP status", ["status"],
                                registry=registry)
        self.latency = Histogram("icv_request_seconds", "Time to answer POST /v1/infer, any status", buckets=SECONDS,
                                 registry=registry)
        self.queue = Histogram("icv_queue_seconds", "Time a request waited for its batch to start (queue and transfer)",
                               buckets=SECONDS, registry=registry)
        self.inference = Histogram("icv_inference_seconds", "Run time of the batch a request ran in", buckets=SECONDS,
                                   registry=registry)
        self.batch = Histogram("icv_batch_requests", "Requests in the batch a request ran in (dynamic batching)",
                               buckets=BATCH, registry=registry)
        self.in_flight = Gauge("icv_in_flight_requests", "POST /v1/infer requests being handled now", registry=registry)

    def answered(self, status: int, seconds: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)

    def ran(self, queue_s: float, inference_s: float, batch_requests: int) -> None:
        self.queue.observe(max(0.0, queue_s))
        self.inference.observe(inference_s)
        self.batch.observe(batch_requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
