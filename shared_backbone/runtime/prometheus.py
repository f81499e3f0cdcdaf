"""Prometheus metrics and the access log of every server (gateway and nodes); one definition of each name.

Each server owns a `ServerMetrics` (its own registry, so several servers in one process, as in
the tests, never mix counts) and may expose it on `/metrics` (`serve_http`). Exposed names
(counters get Prometheus' `_total` suffix):

  attribnet_rpc_requests_total{method,code}     every RPC by method and final status code
  attribnet_rpc_latency_seconds{method}         histogram of RPC handling time
  attribnet_images_total                        images (gateway) or feature rows (node) scored
  attribnet_answers_total{reason}               gateway: answers by the rule's exit that gave them
                                                (rule.REASONS: a rising `atypical` share can mean a generator none of ours)
  attribnet_batch_size{stage}                   histogram of rows per batch run (stage trunk | head)
  attribnet_queue_depth{stage}                  rows waiting in the batcher's queue
  attribnet_rejected_total{reason}              requests refused under load (rate_limit, queue_full, expired)
  attribnet_node_latency_seconds{node}          gateway: histogram of each node's Score time
  attribnet_node_timeouts_total{node}           gateway: Score calls past their deadline
  attribnet_node_errors_total{node,reason}      gateway: other failed calls or wrong answers
  attribnet_node_skipped_total{node}            gateway: batches a node sat out in cool-down
  attribnet_node_slow_total{node}               gateway: Score calls cut for exceeding the latency budget
  attribnet_trace_count{model}                  traces of the compiled models (stays 1 per model)
  attribnet_stage_seconds{stage}                histogram of the time spent in each step of a query:
                                                decode, queue, trunk, nodes, respond (gateway), head (node)

The access log (`access_log: true`) is one INFO line per RPC on the `attribnet.access` logger:
peer, method, status code, milliseconds, request bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared_backbone.runtime.rpc import RpcConfigError

log = logging.getLogger(__name__)
access_log = logging.getLogger("attribnet.access")

PREFIX = "attribnet"
REQUESTS = f"{PREFIX}_rpc_requests"
LATENCY = f"{PREFIX}_rpc_latency_seconds"
IMAGES = f"{PREFIX}_images"
ANSWERS = f"{PREFIX}_answers"
BATCH_SIZE = f"{PREFIX}_batch_size"
QUEUE_DEPTH = f"{PREFIX}_queue_depth"
REJECTED = f"{PREFIX}_rejected"
NODE_LATENCY = f"{PREFIX}_node_latency_seconds"
NODE_TIMEOUTS = f"{PREFIX}_node_timeouts"
NODE_ERRORS = f"{PREFIX}_node_errors"
NODE_SKIPPED = f"{PREFIX}_node_skipped"
NODE_SLOW = f"{PREFIX}_node_slow"
CANARIES = f"{PREFIX}_canaries"
NODE_QUARANTINED = f"{PREFIX}_node_quarantined"
NODE_FLAGGED = f"{PREFIX}_node_flagged"
TRACES = f"{PREFIX}_trace_count"
STAGE_SECONDS = f"{PREFIX}_stage_seconds"

STAGE_DECODE = "decode"  # per request: admission, decoding, preprocessing
STAGE_QUEUE = "queue"  # per request: waiting for its micro-batch to start
STAGE_TRUNK = "trunk"  # per batch: the serving model
STAGE_NODES = "nodes"  # per batch: first Score call sent until the last node answered or failed
STAGE_RESPOND = "respond"  # per request: calibration, the rule, building the response
STAGE_HEAD = "head"  # per batch on a node: the head
STAGES = (STAGE_DECODE, STAGE_QUEUE, STAGE_TRUNK, STAGE_NODES, STAGE_RESPOND, STAGE_HEAD)
REJECT_RATE = "rate_limit"
REJECT_QUEUE = "queue_full"
REJECT_EXPIRED = "expired"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The metrics of one server process role, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(REQUESTS, "RPCs handled, by method and status code", ["method", "code"], registry=r)
        self.latency = Histogram(LATENCY, "RPC handling time", ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter(IMAGES, "images (gateway) or feature rows (node) scored", registry=r)
        self.answers = Counter(ANSWERS, "answers, by the rule's exit that gave them", ["reason"], registry=r)
        self.batch_size = Histogram(BATCH_SIZE, "rows per batch run", ["stage"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(QUEUE_DEPTH, "rows waiting in the batcher queue", ["stage"], registry=r)
        self.rejected = Counter(REJECTED, "requests refused under load", ["reason"], registry=r)
        self.node_latency = Histogram(NODE_LATENCY, "a node's Score time", ["node"], buckets=LATENCY_BUCKETS, registry=r)
        self.node_timeouts = Counter(NODE_TIMEOUTS, "Score calls past their deadline", ["node"], registry=r)
        self.node_errors = Counter(NODE_ERRORS, "failed Score calls or wrong answers", ["node", "reason"], registry=r)
        self.node_skipped = Counter(NODE_SKIPPED, "batches a node sat out in cool-down", ["node"], registry=r)
        self.node_slow = Counter(NODE_SLOW, "Score calls cut for exceeding the latency budget", ["node"], registry=r)
        self.canaries = Counter(CANARIES, "canary images a node scored, by what it did with them", ["node", "outcome"], registry=r)
        self.node_quarantined = Counter(NODE_QUARANTINED, "quarantines by the gateway's audits", ["node", "by"], registry=r)
        self.node_flagged = Counter(NODE_FLAGGED, "flags by the win-rate monitor", ["node"], registry=r)
        self.traces = Gauge(TRACES, "traces of a compiled model", ["model"], registry=r)
        self.stage_seconds = Histogram(STAGE_SECONDS, "time in one step of a query", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self._http = None

    def batch_observer(self, stage: str) -> Callable[[int], None]:
        return self.batch_size.labels(stage=stage).observe

    def depth_setter(self, stage: str) -> Callable[[int], None]:
        return self.queue_depth.labels(stage=stage).set

    def stage(self, stage: str) -> Callable[[float], None]:
        """The observer of one stage's seconds."""
        return self.stage_seconds.labels(stage=stage).observe

    def watch_traces(self, name: str, counter: Callable[[], int]) -> None:
        """Exports a compiled model's trace counter, read at scrape time."""
        self.traces.labels(model=name).set_function(counter)

    def serve_http(self, host: str, port: int) -> int:
        """Serves `/metrics` on host:port (0 = any free port); returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def serve_metrics(metrics: ServerMetrics, host: str, port: int) -> int:
    """Starts `/metrics` on host:port unless port is -1; returns the bound port (or -1)."""
    if port < 0:
        return -1
    try:
        bound = metrics.serve_http(host, port)
    except OSError as exc:
        raise RpcConfigError(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
    return bound


def method_label(full_method: str) -> str:
    """`/attribution.v1.HeadService/Score` -> `HeadService/Score`."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts, times and (optionally) access-logs every unary RPC, including refused ones.

    Placed first among a server's interceptors, so calls the token check refuses are counted too.
    """

    def __init__(self, metrics: ServerMetrics, log_access: bool = False) -> None:
        self.metrics = metrics
        self.log_access = log_access

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = method_label(handler_call_details.method)
        behavior = handler.unary_unary

        def observed(request, context: grpc.ServicerContext):
            start = time.perf_counter()
            failed = False
            try:
                return behavior(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                self._record(method, request, context, time.perf_counter() - start, failed)

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def _record(self, method: str, request, context: grpc.ServicerContext, seconds: float, failed: bool) -> None:
        code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.metrics.requests.labels(method=method, code=name).inc()
        self.metrics.latency.labels(method=method).observe(seconds)
        if self.log_access:
            access_log.info(
                "%s %s %s %.1fms %dB", context.peer(), method, name, seconds * 1000, request.ByteSize()
            )
