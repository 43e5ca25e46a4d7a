"""HTTP API (FastAPI): offer acceptance for merchants, reads, health, metrics and the admin API."""

from __future__ import annotations

import hmac
from typing import Any, cast

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.ratelimit import FailedAuthLimiter
from services.disbursement.service import AcceptOffer, ApiKeyInUse, DisbursementService


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, {"code": "unauthenticated", "message": "Authorization: Bearer <key> required"},
                            headers={"WWW-Authenticate": "Bearer"})
    return authorization[7:].strip()


class MerchantIn(BaseModel):
    merchant_id: str = Field(min_length=1, max_length=128)
    webhook_url: str | None = Field(default=None, max_length=2048)
    api_key: str | None = Field(default=None, min_length=16)
    webhook_secret: str | None = None
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    event_types: list[str] = []


class ApiKeyIn(BaseModel):
    api_key: str = Field(min_length=16)


class KillSwitchIn(BaseModel):
    # Strict: a lax bool would read "yes" or 1 as true and switch lending off (or on) by accident.
    on: StrictBool


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error this service answers with (except FastAPI's own request-validation 422)."""

    error: ErrorDetail


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    # Declared so the OpenAPI spec lists every answer a client must handle, not only 2xx and 422.
    why = {400: "Bad request (e.g. Idempotency-Key missing)", 401: "Missing or unknown key",
           403: "Wrong admin key", 404: "Not found (or not yours)", 409: "Conflict with the current state",
           422: "Request refused", 429: "Too many failed authentications; see Retry-After",
           503: "Database unavailable; retry after Retry-After"}
    return {code: {"model": ErrorBody, "description": why[code]} for code in statuses}


MERCHANT_ERRORS = (401, 429, 503)
ADMIN_ERRORS = (401, 403, 404, 429, 503)


def _key_in_use() -> HTTPException:
    # API keys are unique (they identify the merchant); say so without telling whose key it is.
    return HTTPException(409, {"code": "api_key_in_use", "message": "this API key is already assigned; use another"})


def openapi_spec() -> dict[str, Any]:
    """The API's OpenAPI document, as committed in services/disbursement/openapi.json."""
    # Routes touch the service only when called, so no database is needed to describe them.
    return create_app(cast(DisbursementService, None)).openapi()


def create_app(svc: DisbursementService, limiter: FailedAuthLimiter | None = None) -> FastAPI:
    app = FastAPI(title="Floatbridge disbursement", version="1")
    limiter = limiter or FailedAuthLimiter()

    def _gate(request: Request) -> str:
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait:
            raise HTTPException(429, {"code": "too_many_failed_attempts",
                                      "message": "too many failed authentications from this address"},
                                headers={"Retry-After": str(wait)})
        return client

    def merchant(request: Request, authorization: str | None = Header(default=None)) -> str:
        client = _gate(request)
        merchant_id = svc.authenticate(_bearer(authorization))
        if merchant_id is None:
            limiter.failed(client)
            raise HTTPException(401, {"code": "unauthenticated", "message": "unknown API key"})
        return merchant_id

    def admin(request: Request, authorization: str | None = Header(default=None)) -> None:
        client = _gate(request)
        expected = svc.settings.admin_api_key
        if not expected:
            raise HTTPException(404, {"code": "admin_disabled", "message": "admin API is not configured"})
        if not hmac.compare_digest(_bearer(authorization).encode(), expected.encode()):
            limiter.failed(client)
            raise HTTPException(403, {"code": "forbidden", "message": "wrong admin key"})

    @app.post("/v1/offers/{offer_id}/accept", responses={
        202: {"description": "Loan created; payout still in flight (the loan view says its state)"},
        **_errors(400, 404, 409, 422, *MERCHANT_ERRORS)})
    def accept(offer_id: str, merchant_id: str = Depends(merchant),
               idempotency_key: str | None = Header(default=None)) -> Response:
        if not idempotency_key:
            raise HTTPException(400, {"code": "idempotency_key_required", "message": "Idempotency-Key header required"})
        result = svc.accept(AcceptOffer(offer_id, merchant_id, idempotency_key, svc.clock()))
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return JSONResponse(result.body, status_code=result.status_code, headers=headers)

    @app.get("/v1/loans/{loan_id}", responses=_errors(404, *MERCHANT_ERRORS))
    def get_loan(loan_id: str, merchant_id: str = Depends(merchant)) -> dict[str, Any]:
        loan = svc.get_loan(merchant_id, loan_id)
        if loan is None:
            raise HTTPException(404, {"code": "loan_not_found", "message": "no such loan"})
        return loan

    @app.get("/v1/offers/{offer_id}", responses=_errors(404, *MERCHANT_ERRORS))
    def get_offer(offer_id: str, merchant_id: str = Depends(merchant)) -> dict[str, Any]:
        offer = svc.get_offer(merchant_id, offer_id)
        if offer is None:
            raise HTTPException(404, {"code": "offer_not_found", "message": "no such offer"})
        return offer

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Database unavailable or not migrated"}})
    def readyz() -> Response:
        from services.disbursement.migrations import current

        try:
            with svc.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            revision = current(svc.engine)
        except sa.exc.SQLAlchemyError as exc:
            return JSONResponse({"status": "database unavailable", "error": exc.__class__.__name__}, 503)
        if revision is None:
            return JSONResponse({"status": "database not migrated"}, 503)
        return JSONResponse({"status": "ready", "schema_revision": revision})

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        body, ctype = svc.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/admin/merchants", dependencies=[Depends(admin)], responses=_errors(*ADMIN_ERRORS))
    def list_merchants() -> list[dict[str, Any]]:
        return svc.list_merchants()

    @app.post("/admin/merchants", dependencies=[Depends(admin)], status_code=201,
              responses=_errors(400, 409, 422, *ADMIN_ERRORS))
    def add_merchant(body: MerchantIn) -> dict[str, Any]:
        try:
            secret = svc.register_merchant(body.merchant_id, body.webhook_url, body.api_key, body.webhook_secret,
                                           body.currency, tuple(body.event_types))
        except ApiKeyInUse:
            raise _key_in_use() from None
        except ValueError as exc:
            raise HTTPException(422, {"code": "invalid_merchant", "message": str(exc)}) from None
        return {"merchant_id": body.merchant_id, "webhook_secret": secret}

    @app.post("/admin/merchants/{merchant_id}/rotate-secret", dependencies=[Depends(admin)],
              responses=_errors(422, *ADMIN_ERRORS))
    def rotate(merchant_id: str, drop_previous: bool = False) -> dict[str, Any]:
        try:
            return {"merchant_id": merchant_id, "webhook_secret": svc.rotate_secret(merchant_id, None, drop_previous)}
        except KeyError:
            raise HTTPException(404, {"code": "merchant_not_found", "message": "no such merchant"}) from None

    @app.put("/admin/merchants/{merchant_id}/api-key", dependencies=[Depends(admin)], status_code=204,
             responses=_errors(400, 409, 422, *ADMIN_ERRORS))
    def set_key(merchant_id: str, body: ApiKeyIn) -> Response:
        try:
            svc.set_api_key(merchant_id, body.api_key)
        except KeyError:
            raise HTTPException(404, {"code": "merchant_not_found", "message": "no such merchant"}) from None
        except ApiKeyInUse:
            raise _key_in_use() from None
        except ValueError as exc:
            raise HTTPException(422, {"code": "invalid_api_key", "message": str(exc)}) from None
        return Response(status_code=204)

    @app.put("/admin/kill-switch", dependencies=[Depends(admin)], responses=_errors(400, 422, *ADMIN_ERRORS))
    def kill_switch(body: KillSwitchIn) -> dict[str, bool]:
        svc.set_kill_switch(body.on)
        return {"on": body.on}

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    def database_down(_: Request, exc: Exception) -> JSONResponse:
        # A transaction that failed committed nothing: the same request (same Idempotency-Key) is safe to retry.
        return JSONResponse({"error": {"code": "unavailable", "message": "database unavailable, retry later"}},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The same envelope as every other error, so a client has one error format to parse.
        where = "; ".join(f"{'/'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return JSONResponse({"error": {"code": "invalid_request", "message": where[:1000]}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {"code": "error", "message": str(exc.detail)}
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    return app
