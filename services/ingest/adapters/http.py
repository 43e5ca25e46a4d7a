"""HTTP intake: POST /v1/events (JSON array or NDJSON), health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from services.common.ratelimit import FailedAuthLimiter
from services.ingest.adapters.jsoncodec import loads, parse_ndjson
from services.ingest.bootstrap import IngestRuntime
from services.ingest.domain.model import Status

NDJSON = "application/x-ndjson"


class ErrorItem(BaseModel):
    pointer: str
    message: str


class EventResultModel(BaseModel):
    index: int
    id: str | None
    status: Literal["accepted", "duplicate", "rejected", "retry"]
    reason: Literal["malformed", "size", "schema", "money", "time", "conflict"] | None = None
    errors: list[ErrorItem] = []
    detail: str | None = None


class BatchResponse(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    retry: int
    results: list[EventResultModel]


class Problem(BaseModel):
    error: str
    detail: str


_CLOUDEVENT_DOC: dict[str, Any] = {
    "type": "object",
    "description": "A CloudEvents 1.0 marketplace event (see schemas/json/cloudevent.schema.json)",
    "required": ["specversion", "id", "source", "type", "time", "subject", "data"],
    "properties": {
        "specversion": {"const": "1.0"}, "id": {"type": "string"}, "source": {"type": "string"},
        "type": {"type": "string"}, "time": {"type": "string", "format": "date-time"},
        "subject": {"type": "string", "description": "merchant id"}, "data": {"type": "object"},
    },
}
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": _CLOUDEVENT_DOC}},
            NDJSON: {"schema": {"type": "string", "description": "one CloudEvent JSON object per line"}},
        },
    }
}


def _problem(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": error, "detail": detail})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def key_ok(header: str | None, hashes: frozenset[str]) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    digest = hashlib.sha256(header[7:].strip().encode("utf-8")).hexdigest()
    found = False
    for h in hashes:  # compare against every hash in constant time, no early exit
        found |= hmac.compare_digest(digest, h)
    return found


def create_app(rt: IngestRuntime, limiter: FailedAuthLimiter | None = None) -> FastAPI:
    s = rt.settings
    limiter = limiter or FailedAuthLimiter()
    app = FastAPI(
        title="Floatbridge ingest", version="1.0.0",
        description="Marketplace events in: validated, normalised, deduplicated by event id, produced to "
        "marketplace.events.v1; bad events go to ingest.rejected.v1 with every error.",
    )
    slots = asyncio.Semaphore(s.max_inflight_batches)
    retry_after = {"Retry-After": str(s.retry_after_seconds)}
    metrics = rt.metrics

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "other")
        metrics.http_requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.http_duration.labels(route).observe(time.perf_counter() - start)
        return response

    @app.post(
        "/v1/events", summary="Submit a batch of marketplace events", response_model=BatchResponse,
        openapi_extra=_BODY_DOC,
        responses={
            400: {"model": Problem, "description": "body is not a JSON array (or not JSON)"},
            401: {"model": Problem, "description": "missing or unknown marketplace API key"},
            429: {"model": Problem, "description": "too many failed authentications from this address; "
                  "wait Retry-After seconds"},
            413: {"model": Problem, "description": "too many events or bytes in one batch"},
            503: {"model": BatchResponse, "description": "broker or dedupe store unavailable, or busy: "
                  "events marked retry were not taken; send them again after Retry-After seconds"},
        },
    )
    async def post_events(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait:
            metrics.refused.labels("auth").inc()
            return _problem(429, "too_many_failed_attempts", "too many failed authentications from this address",
                            {"Retry-After": str(wait)})
        if not key_ok(request.headers.get("authorization"), rt.key_hashes):
            limiter.failed(client)
            metrics.refused.labels("auth").inc()
            return _problem(401, "unauthorized", "send the marketplace API key as 'Authorization: Bearer <key>'",
                            {"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        try:
            if declared and int(declared) > s.max_batch_bytes:
                raise _TooLarge
            body = await _read_capped(request, s.max_batch_bytes)
        except (_TooLarge, ValueError):
            metrics.refused.labels("size").inc()
            return _problem(413, "batch_too_large", f"a batch may hold at most {s.max_batch_bytes} bytes")
        events, error = _parse(body, request.headers.get("content-type", ""))
        if error:
            metrics.refused.labels("malformed").inc()
            return _problem(400, "malformed_body", error)
        if len(events) > s.max_batch_events:
            metrics.refused.labels("size").inc()
            return _problem(413, "batch_too_large", f"a batch may hold at most {s.max_batch_events} events, "
                            f"got {len(events)}")
        if slots.locked():
            metrics.refused.labels("busy").inc()
            return _problem(503, "busy", "too many batches in flight; retry later", retry_after)
        async with slots:
            metrics.inflight.inc()
            try:
                results = await run_in_threadpool(rt.submit, events, "http")
            finally:
                metrics.inflight.dec()
        counts = {st.value: 0 for st in Status}
        for r in results:
            counts[r.status.value] += 1
        body_out = orjson.dumps({**counts, "results": [r.to_json() for r in results]})
        if counts["retry"]:
            return Response(body_out, status_code=503, media_type="application/json", headers=retry_after)
        return Response(body_out, status_code=200, media_type="application/json")

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Broker and dedupe store reachable",
             responses={503: {"description": "a dependency is unreachable"}})
    async def readyz() -> Response:
        checks = {"broker": rt.sink, "dedupe_store": rt.dedupe}
        report: dict[str, str] = {}
        for name, part in checks.items():
            try:
                ping = getattr(part, "ping", None)
                if callable(ping):
                    await run_in_threadpool(ping)
                report[name] = "ok"
            except Exception as exc:  # any failure means not ready; say which
                report[name] = f"unavailable: {str(exc)[:200]}"
        ok = all(v == "ok" for v in report.values())
        return Response(orjson.dumps({"ready": ok, **report}), status_code=200 if ok else 503,
                        media_type="application/json", headers=None if ok else retry_after)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _parse(body: bytes, content_type: str) -> tuple[list[Any], str]:
    if content_type.split(";")[0].strip().lower() == NDJSON:
        return parse_ndjson(body), ""
    try:
        doc = loads(body)
    except ValueError as exc:
        return [], f"malformed JSON: {exc}"
    if not isinstance(doc, list):
        return [], f"the body must be a JSON array of CloudEvents (or NDJSON with Content-Type {NDJSON})"
    return doc, ""
