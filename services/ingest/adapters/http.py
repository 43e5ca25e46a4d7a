"""HTTP intake: POST /v1/events (JSON array or NDJSON), health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import hmac
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from services.common.ratelimit import FailedAuthLimiter
from services.ingest.adapters.jsoncodec import BOM, parse_array, parse_ndjson, parse_records
from services.ingest.bootstrap import IngestRuntime
from services.ingest.domain.model import Status

NDJSON = "application/x-ndjson"
CLOUDEVENT = "application/cloudevents+json"  # CloudEvents HTTP binding, structured mode: the body is one event
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"  # the binding's batch mode: a JSON array of events
EVENTS_PATH = "/v1/events"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (status, JSON body, extra headers): what POST /v1/events answers, before it is put on the wire.
Answer = tuple[int, bytes, dict[str, str] | None]


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
            CLOUDEVENTS_BATCH: {"schema": {"type": "array", "items": _CLOUDEVENT_DOC}},
            CLOUDEVENT: {"schema": _CLOUDEVENT_DOC},
        },
    }
}


def _problem(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return status, orjson.dumps({"error": error, "detail": detail}), headers


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_capped(receive: Receive, cap: int) -> bytes:
    """The request body from ASGI messages, refused (_TooLarge) as soon as it passes `cap` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > cap:
                raise _TooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _json_response(answer: Answer) -> Response:
    status, body, headers = answer
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _raw_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    """The headers Starlette's Response(body, media_type="application/json", headers=...) sends, in its order."""
    _, body, extra = answer
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append((b"content-type", b"application/json"))
    return raw


class _Intake:
    """Pure ASGI middleware where an `@app.middleware("http")` used to be: times and counts every request
    (floatbridge_ingest_http_*) without BaseHTTPMiddleware's task group and body streams, and answers
    `POST /v1/events` itself, without FastAPI's per-request routing, dependency and response machinery
    (the same answer function as the FastAPI route, which stays for the OpenAPI spec and any other path
    shape). Errors still reach the ServerErrorMiddleware outside it."""

    def __init__(self, app: ASGIApp, post_events: Callable[[Scope, Receive], Awaitable[Answer]],
                 metrics: Any):
        self.app = app
        self.post_events = post_events
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if scope["method"] == "POST" and scope["path"] == EVENTS_PATH and not scope.get("root_path"):
            try:
                answer = await self.post_events(scope, receive)
            except _Disconnected:  # the client went away before sending its body: nobody to answer
                return
            await send({"type": "http.response.start", "status": answer[0], "headers": _raw_headers(answer)})
            await send({"type": "http.response.body", "body": answer[1]})
            self._observe(EVENTS_PATH, "POST", answer[0], start)
            return
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, observed)
        self._observe(getattr(scope.get("route"), "path", "other"), scope["method"], status, start)

    def _observe(self, route: str, method: str, status: int, start: float) -> None:
        self.metrics.http_requests.labels(route, method, str(status)).inc()
        self.metrics.http_duration.labels(route).observe(time.perf_counter() - start)


def _request_headers(scope: Scope) -> tuple[str | None, str | None, str, str]:
    """Authorization, Content-Length, Content-Type and Content-Encoding (first of each, as Starlette's
    headers.get gives)."""
    auth = length = ctype = encoding = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if auth is None:
                auth = value.decode("latin-1")
        elif name == b"content-length":
            if length is None:
                length = value.decode("latin-1")
        elif name == b"content-type":
            if ctype is None:
                ctype = value.decode("latin-1")
        elif name == b"content-encoding" and encoding is None:
            encoding = value.decode("latin-1")
    return auth, length, ctype or "", encoding or ""


# Query parameters that carry a credential by their name alone (whatever their value).
_CREDENTIAL_PARAMS = frozenset(("api_key", "apikey", "api-key", "key", "access_token", "token", "auth",
                                "authorization", "bearer", "secret", "password"))


def credential_in_query(query: bytes, authorization: str | None) -> bool:
    """True when the URL's query string carries an API key: a parameter named like a credential, or any
    value equal to the key of the Authorization header. URLs end up in proxy and access logs and browser
    histories, so such a request is refused even when its Authorization header is good. (Values are not
    compared with the stored keys: that would tell a caller with one good key whether a guess is another.)"""
    if not query:
        return False
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return False
    token = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else ""
    for name, value in pairs:
        if name.strip().lower() in _CREDENTIAL_PARAMS:
            return True
        if token and hmac.compare_digest(value.strip().encode("utf-8", "surrogatepass"),
                                         token.encode("utf-8", "surrogatepass")):
            return True
    return False


def key_ok(header: str | None, hashes: frozenset[str]) -> bool:
    # RFC 9110 section 11.1: the scheme is case-insensitive ("bearer", "BEARER"); one or more spaces follow it.
    if not header or header[:7].lower() != "bearer " or not header[7:].strip():
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

    async def answer_events(scope: Scope, receive: Receive) -> Answer:
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = limiter.retry_after(client)
        if wait:
            metrics.refused.labels("auth").inc()
            return _problem(429, "too_many_failed_attempts", "too many failed authentications from this address",
                            {"Retry-After": str(wait)})
        authorization, declared, content_type, content_encoding = _request_headers(scope)
        if credential_in_query(scope.get("query_string", b""), authorization):
            metrics.refused.labels("auth").inc()
            return _problem(400, "credentials_in_query", "never put the API key in the URL (it ends up in logs); "
                            "send it as 'Authorization: Bearer <key>' and rotate a key that was sent this way")
        if not key_ok(authorization, rt.key_hashes):
            limiter.failed(client)
            metrics.refused.labels("auth").inc()
            return _problem(401, "unauthorized", "send the marketplace API key as 'Authorization: Bearer <key>'",
                            {"WWW-Authenticate": "Bearer"})
        try:
            if declared and int(declared) > s.max_batch_bytes:
                raise _TooLarge
            body = await _read_capped(receive, s.max_batch_bytes)
        except (_TooLarge, ValueError):
            metrics.refused.labels("size").inc()
            return _problem(413, "batch_too_large", f"a batch may hold at most {s.max_batch_bytes} bytes")
        refused = _decode_body(body, content_encoding, content_type, s.max_batch_bytes)
        if isinstance(refused, tuple):
            metrics.refused.labels("size" if refused[0] == 413 else "malformed").inc()
            return refused
        events, error = _parse(refused, content_type)
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
            return 503, body_out, retry_after
        return 200, body_out, None

    @app.post(
        EVENTS_PATH, summary="Submit a batch of marketplace events", response_model=BatchResponse,
        openapi_extra=_BODY_DOC,
        responses={
            400: {"model": Problem, "description": "body is not a JSON array (or not JSON), or the URL's query "
                  "string carries an API key (refused whatever the Authorization header says)"},
            401: {"model": Problem, "description": "missing or unknown marketplace API key"},
            429: {"model": Problem, "description": "too many failed authentications from this address; "
                  "wait Retry-After seconds"},
            413: {"model": Problem, "description": "too many events or bytes in one batch (bytes after "
                  "decompression when Content-Encoding is gzip or deflate)"},
            415: {"model": Problem, "description": "a Content-Encoding other than gzip, deflate or identity, "
                  "or a charset Python does not know"},
            503: {"model": BatchResponse, "description": "broker or dedupe store unavailable, or busy: "
                  "events marked retry were not taken; send them again after Retry-After seconds"},
        },
    )
    async def post_events(request: Request) -> Response:
        try:
            return _json_response(await answer_events(request.scope, request.receive))
        except _Disconnected:
            raise ClientDisconnect from None  # what Starlette's request.stream() raises

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

    app.add_middleware(_Intake, post_events=answer_events, metrics=metrics)
    return app


# Media types read as NDJSON (one event per line); any other or no Content-Type is read as a JSON array.
NDJSON_TYPES = frozenset((NDJSON, "application/ndjson", "application/jsonl", "application/x-jsonl",
                          "application/jsonlines", "application/x-jsonlines"))
_UTF8_CHARSETS = frozenset(("", "utf-8", "utf8", "us-ascii", "ascii"))
_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # zlib format


def _inflate(body: bytes, wbits: int, cap: int) -> bytes | None:
    """The decompressed body, None once it passes `cap` bytes; zlib.error if it is not one complete stream. A gzip
    body may be several members one after another (RFC 1952 2.2: what `cat a.gz b.gz` or a streaming writer
    makes); their contents are concatenated. Anything else after the end of the stream is an error."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        part = inflater.decompress(rest, cap + 1 - size)  # a max_length of at least 1: never unlimited
        size += len(part)
        if size > cap or inflater.unconsumed_tail:
            return None
        tail = inflater.flush()
        size += len(tail)
        parts += (part, tail)
        if not inflater.eof:
            raise zlib.error("truncated or trailing data")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if wbits != 16 + zlib.MAX_WBITS or rest[:2] != b"\x1f\x8b":
            raise zlib.error("truncated or trailing data")


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return ""


def _decode_body(body: bytes, encoding: str, content_type: str, cap: int) -> bytes | Answer:
    """The body as UTF-8 JSON text: decompressed (gzip/deflate, at most `cap` bytes) and transcoded from a
    declared charset; or the 4xx answer that refuses it."""
    coding = encoding.strip().lower()
    if coding not in ("", "identity"):
        wbits = _DECOMPRESSORS.get(coding)
        if wbits is None:
            return _problem(415, "unsupported_encoding", f"Content-Encoding {coding[:40]!r} is not supported; "
                            "send gzip, deflate or an uncompressed body")
        try:
            out = _inflate(body, wbits, cap)
        except zlib.error as exc:
            if coding != "deflate":
                return _problem(400, "malformed_body", f"the body is not valid {coding}: {exc}")
            try:  # "deflate" sent without its zlib wrapper (raw RFC 1951), as some clients do
                out = _inflate(body, -zlib.MAX_WBITS, cap)
            except zlib.error:
                return _problem(400, "malformed_body", f"the body is not valid {coding}: {exc}")
        if out is None or len(out) > cap:
            return _problem(413, "batch_too_large", f"a batch may hold at most {cap} bytes (decompressed)")
        body = out
    charset = _charset(content_type)
    if charset in _UTF8_CHARSETS:
        return body
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        return _problem(415, "unsupported_charset", f"charset {charset[:40]!r} is unknown; send UTF-8")
    try:
        return body.decode(codec.name).encode("utf-8", "surrogatepass")
    except UnicodeError as exc:
        return _problem(400, "malformed_body", f"the body is not valid {codec.name}: {str(exc)[:200]}")


def _parse(body: bytes, content_type: str) -> tuple[list[Any], str]:
    media = content_type.split(";")[0].strip().lower()
    if media in NDJSON_TYPES:
        return parse_ndjson(body), ""
    if media == CLOUDEVENT and body.removeprefix(BOM).lstrip(b" \t\r\n")[:1] == b"{":
        return parse_records([body]), ""  # a batch of one, judged like an NDJSON line
    try:
        doc = parse_array(body)
    except ValueError as exc:
        hint = f" (one event per line is NDJSON: send Content-Type {NDJSON})" if body.lstrip()[:1] == b"{" else ""
        return [], f"malformed JSON: {exc}{hint}"
    if not isinstance(doc, list):
        return [], f"the body must be a JSON array of CloudEvents (or NDJSON with Content-Type {NDJSON})"
    return doc, ""
