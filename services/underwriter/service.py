"""Application core: apply an event to the merchant's state, rescore (debounced), decide, emit CloudEvents.

The same core runs in the Faust worker, the embedded engine and the benchmark. Merchant state lives in the
store it is given: a plain `dict` (embedded engine, tests, benchmark) holds the live MerchantState objects and
nothing is serialised; any other `MutableMapping[str, bytes]` (the Faust table adapter) holds
MerchantState.to_bytes, written after every applied event, with the decoded objects cached while the store
still holds the very bytes written. `state(merchant_id)` returns a copy either way.

Debounce (event time): a merchant is rescored on a *material* event (settlement, refund, chargeback,
cancellation, merchant or loan event) at once; other events (orders placed, paid, shipped, delivered) rescore
at most every `debounce_seconds` of event time. The rest wait in `pending` until `flush(now)` scores every
merchant whose first pending event is `debounce_seconds` old, so the limit reflects the latest event within
`debounce_seconds` of event time (the worker's timer calls flush every `flush_interval_seconds`).
Across restarts: `pending` is also saved in each merchant's state (MerchantState.pending, cleared by its next
decision), because the input offsets of debounced events are committed before their decision. A worker that
restores the states (after a graceful stop, a kill -9 or a rebalance) rebuilds `pending` with `restore_pending`
once its partitions are recovered, and its flush decides them: with no newer event, within `debounce_seconds`
(plus one flush interval) of wall time after the recovery, as of the merchant's latest event and naming the
latest pending event as trigger, i.e. the decision the stopped worker would have taken.

Batches (the Faust worker): `handle_batch` applies a batch in order and scores each merchant of it at most
once, after its last event of the batch, as of its latest event time. The worker hands over a batch when
it holds `batch_max` records, and a timer hands over whatever is collected every `batch_within_seconds`, so
while the worker keeps up with its input batching adds at most `batch_within_seconds` plus the processing
time of the batch (and of the one before it) of wall-clock delay to the bound above; behind a backlog (more
records already on the broker) a batch keeps filling, for at most `batch_max_wait_seconds`, since those
records have waited longer than that already. The decision then reflects every event of the batch. Replays are exact: with input positions, a restored state skips the records it already holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from schemas.codec import deterministic_id, new_event
from services.underwriter.domain.decisions import Action, Portfolio, decide_actions, kill_switch_withdrawal
from services.underwriter.domain.features import compute_features
from services.underwriter.domain.policy import PolicySettings, base_rate_bps, decide_limit, merge_reasons
from services.underwriter.domain.scoring import Score, Scorer
from services.underwriter.domain.state import HANDLED, LOAN_EVENTS, MerchantState, StateError
from services.underwriter.settings import UnderwriterSettings

try:
    import orjson
except ImportError:  # pragma: no cover - a declared dependency; the stdlib encoder writes the same JSON
    orjson = None  # type: ignore[assignment]


def state_bytes(state: MerchantState) -> bytes:
    """MerchantState.to_bytes with orjson as the JSON encoder (~4x faster than the stdlib's on a state: the
    same compact JSON text for the ints, strings, lists and dicts a state holds, UTF-8 rather than \\u escapes
    outside ASCII); the stdlib encoder when orjson refuses a value (an integer beyond 64 bits)."""
    if orjson is not None:
        try:
            return state.to_bytes(_orjson_dumps)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return state.to_bytes()


def _orjson_dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


RELEASING = frozenset({"loan.repayment_applied", "loan.charged_off", "loan.repaid", "loan.cancelled"})

MATERIAL = frozenset({
    "settlement.paid", "order.refunded", "order.chargeback", "order.cancelled",
    "merchant.onboarded", "merchant.updated",
}) | LOAN_EVENTS


class Metrics(Protocol):
    def events(self, counts: Mapping[tuple[str, str], int]) -> None: ...
    def lags(self, seconds: Sequence[float]) -> None: ...
    def processed(self, seconds: float) -> None: ...
    def scored(self, trigger: str, pd: float, limit: int) -> None: ...
    def decision(self, kind: str) -> None: ...
    def shadow(self, agree: bool, diff: float) -> None: ...
    def sizes(self, merchants: int, pending: int) -> None: ...


class MemoryPortfolio:
    """Portfolio counters over a mapping: a dict when embedded, a global Faust table in the worker.

    Keys: "day:<epoch day>:<currency>" (originations reserved that day), "cat:<category>:<currency>" (exposure).
    """

    def __init__(self, counters: MutableMapping[str, int] | None = None) -> None:
        self.counters: MutableMapping[str, int] = {} if counters is None else counters

    def remaining(self, day: int, category: str, currency: str, p: PolicySettings) -> int:
        used_day = int(self.counters.get(f"day:{day}:{currency}", 0))
        used_cat = int(self.counters.get(f"cat:{category}:{currency}", 0))
        return max(0, min(p.daily_budget_minor - used_day, p.category_cap_minor - used_cat))

    def reserve(self, day: int, category: str, currency: str, amount: int) -> None:
        for key in (f"day:{day}:{currency}", f"cat:{category}:{currency}"):
            self.counters[key] = int(self.counters.get(key, 0)) + amount

    def release(self, category: str, currency: str, amount: int) -> None:
        key = f"cat:{category}:{currency}"
        self.counters[key] = max(0, int(self.counters.get(key, 0)) - amount)

    def unreserve(self, day: int, currency: str, amount: int) -> None:
        key = f"day:{day}:{currency}"
        self.counters[key] = max(0, int(self.counters.get(key, 0)) - amount)


class Underwriter:
    def __init__(
        self,
        settings: UnderwriterSettings,
        policy: PolicySettings,
        scorer: Scorer,
        store: MutableMapping[str, Any],
        portfolio: Portfolio,
        metrics: Metrics,
        challenger: Scorer | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.scorer = scorer
        self.challenger = challenger
        self.store = store
        # A plain dict keeps objects; anything else is a bytes port (the Faust table) and gets to_bytes.
        self._objects = type(store) is dict
        self.portfolio = portfolio
        self.metrics = metrics
        # merchant id -> [first pending event time, latest pending event time, latest pending event id]
        self.pending: dict[str, list[Any]] = {}
        # Decoded states by merchant, reused while the store still holds the very bytes we wrote (saves a
        # decode per event; a restored or rebalanced table holds other bytes objects, so it is never stale).
        self._hot: dict[str, tuple[bytes, MerchantState]] = {}
        self.hot_size = 10_000

    # ----- public API -----------------------------------------------------------------------------------

    def state(self, merchant_id: str) -> MerchantState | None:
        """A copy of the merchant's state (changing it does not change the underwriter's)."""
        raw = self.store.get(merchant_id)
        if raw is None:
            return None
        return MerchantState.from_bytes(raw.to_bytes() if isinstance(raw, MerchantState) else raw)

    def handle(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply one marketplace or loans.v1 event; returns the CloudEvents to emit (maybe none).

        Raises StateError (and the other errors of a malformed event) after leaving the state as it was."""
        out, errors = self.handle_batch([event])
        if errors:
            raise errors[0][1]
        return out

    def handle_batch(
        self, events: list[dict[str, Any]], positions: list[tuple[str, int]] | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[int, Exception]]]:
        """Apply a batch of events in order; score each merchant at most once, after its last event.

        Returns the CloudEvents to emit and the events that could not be applied as (index, error) (each
        left the state as it was; the rest of the batch still applies). A merchant is due for a decision
        when any of its events in the batch would have made it due on its own (material, or debounce_seconds
        of event time since its last score); the one decision is taken as of the merchant's latest event
        time, after all its events of the batch, and names the merchant's latest event (by event time) as trigger.
        Each merchant's state is loaded and saved once per batch. A batch of one is exactly `handle`.

        `positions` (one (source, offset) per event, e.g. ("topic:partition", offset)) makes a replay exact:
        the state remembers the last position applied per source, and a record at or before it is skipped
        (outcome "replayed"). That is what a worker needs when it restores a state from the changelog that
        is ahead of the input offsets committed for it (a worker killed between the two).
        """
        started = time.perf_counter()
        errors: list[tuple[int, Exception]] = []
        # merchant id -> [state, due, material, first ts, latest ts, latest event id]
        touched: dict[str, list[Any]] = {}
        states: dict[str, MerchantState] = {}  # every state loaded in this batch (one object per merchant)
        moved: set[str] = set()  # merchants whose position advanced on a duplicate only: saved, not scored
        metrics = self.metrics
        debounce = self.settings.debounce_seconds
        # Counted per batch, then handed to the metrics once: an update per event cost ~5% of the batch.
        tally: dict[tuple[str, str], int] = {}
        lags: list[float] = []
        now = time.time()
        for index, event in enumerate(events):
            etype = str(event.get("type"))
            merchant_id = event.get("subject")
            if etype not in HANDLED or not isinstance(merchant_id, str) or not merchant_id:
                key = (etype if etype in HANDLED else "other", "ignored")
                tally[key] = tally.get(key, 0) + 1
                continue
            entry = touched.get(merchant_id)
            state = states.get(merchant_id) or states.setdefault(merchant_id, self._load(merchant_id))
            position = positions[index] if positions is not None else None
            if position is not None and state.already_applied(*position):
                tally[(etype, "replayed")] = tally.get((etype, "replayed"), 0) + 1
                continue
            # What a repayment or charge-off releases is read before the event applies (a charge-off closes the
            # loan that knows the category its exposure was reserved in).
            release = state.release_of(event) if etype in RELEASING else None
            try:
                ts = state.apply_ts(event)
            except Exception as exc:
                self._hot.pop(merchant_id, None)  # the cached object may be half-updated: reload next time
                if entry is None and merchant_id not in moved:
                    states.pop(merchant_id, None)
                tally[(etype, "error")] = tally.get((etype, "error"), 0) + 1
                if not isinstance(exc, (StateError, KeyError, TypeError, ValueError)):
                    metrics.events(tally)
                    metrics.lags(lags)
                    raise
                errors.append((index, exc))
                continue
            if position is not None:
                state.advance(*position)
            if ts is None:
                tally[(etype, "duplicate")] = tally.get((etype, "duplicate"), 0) + 1
                if position is not None:
                    moved.add(merchant_id)  # keep the advanced position
                continue
            tally[(etype, "applied")] = tally.get((etype, "applied"), 0) + 1
            lags.append(now - ts)
            if release is not None:
                self._portfolio_effects(state, release)
            material = etype in MATERIAL
            due = material or ts - state.last_scored >= debounce
            if entry is None:
                touched[merchant_id] = [state, due, material, ts, ts, event["id"]]
            else:
                entry[1] = entry[1] or due
                entry[2] = entry[2] or material
                if ts >= entry[4]:
                    entry[4], entry[5] = ts, event["id"]
        metrics.events(tally)
        metrics.lags(lags)
        out: list[dict[str, Any]] = []
        for merchant_id, (state, due, material, first_ts, latest_ts, last_id) in touched.items():
            if due:
                # Decide as of the merchant's latest event time: a late event must not rewind the view.
                self.pending.pop(merchant_id, None)
                out.extend(self._decide(state, state.latest, str(last_id), "material" if material else "event"))
            else:
                pending = self.pending.get(merchant_id)
                if pending is None:
                    pending = self.pending[merchant_id] = [first_ts, latest_ts, last_id]
                elif latest_ts >= pending[1]:
                    pending[1], pending[2] = latest_ts, last_id
                state.pending = [pending[0], pending[1], pending[2]]  # saved: a restarted worker finds it
            self._save(state)
        for merchant_id in moved - touched.keys():
            self._save(states[merchant_id])
        if out:
            metrics.processed(time.perf_counter() - started)
        return out, errors

    def flush(self, now: datetime) -> list[dict[str, Any]]:
        """Score every pending merchant whose first pending event is at least debounce_seconds older than now."""
        if now.tzinfo is None:
            raise ValueError("flush(now) needs a timezone-aware event time")
        cutoff = now.timestamp() - self.settings.debounce_seconds
        out: list[dict[str, Any]] = []
        for merchant_id in [m for m, p in self.pending.items() if p[0] <= cutoff]:
            out.extend(self.flush_merchant(merchant_id))
        self.metrics.sizes(len(self.store), len(self.pending))
        return out

    def flush_merchant(self, merchant_id: str) -> list[dict[str, Any]]:
        entry = self.pending.pop(merchant_id, None)
        if entry is None or merchant_id not in self.store:
            return []
        state = self._load(merchant_id)
        out = self._decide(state, state.latest, str(entry[2]), "debounced")
        self._save(state)
        return out

    def restore_pending(
        self, merchant_ids: Iterable[str] | None = None, accept: Callable[[MerchantState], bool] | None = None,
    ) -> list[MerchantState]:
        """Rebuild `pending` from the stored states (by default every merchant in the store): a merchant whose
        saved state holds a debounce marker (events no decision reflects yet) and that `accept` takes (the
        worker accepts only merchants of partitions it actively owns) is pending again, so `flush` decides it.
        A merchant already pending keeps its in-memory entry. Returns the states restored."""
        restored: list[MerchantState] = []
        for merchant_id in list(self.store if merchant_ids is None else merchant_ids):
            if merchant_id in self.pending:
                continue
            raw = self.store.get(merchant_id)
            if raw is None or (isinstance(raw, bytes) and not MerchantState.may_be_pending(raw)):
                continue
            state = self._load(merchant_id)
            if len(state.pending) != 3 or (accept is not None and not accept(state)):
                continue
            self.pending[merchant_id] = list(state.pending)
            restored.append(state)
        return restored

    def withdraw_open_offers(
        self, merchant_ids: Iterable[str] | None = None, accept: Callable[[MerchantState], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """With the kill switch on, withdraw every open offer now (by default of every merchant in the store;
        `accept` as in `restore_pending`: the worker takes only merchants of partitions it actively owns), not at
        each merchant's next decision: a merchant that sends nothing would keep an offer it can accept until it
        expires. Each is a loan_offer.withdrawn naming KILL_SWITCH at the merchant's latest event time, its id
        following from the offer, and frees what the offer held in the portfolio; a second sweep finds nothing
        (the state no longer holds the offer). Returns the CloudEvents to emit; none when the switch is off."""
        if not self.policy.kill_switch:
            return []
        out: list[dict[str, Any]] = []
        for merchant_id in list(self.store if merchant_ids is None else merchant_ids):
            raw = self.store.get(merchant_id)
            if raw is None or (isinstance(raw, bytes) and not MerchantState.may_hold_offer(raw)):
                continue
            state = self._load(merchant_id)
            if not state.offer or (accept is not None and not accept(state)):
                continue
            when = datetime.fromtimestamp(state.latest, UTC)
            for a in kill_switch_withdrawal(state, state.latest, self.policy, self.portfolio):
                data = {"offer_id": a.data["offer_id"], "reasons": [r.to_json() for r in a.data["reasons"]]}
                self.metrics.decision(a.kind)
                out.append(new_event(a.kind, state.merchant_id, data, when, self.settings.source,
                                     id=deterministic_id(str(a.data["offer_id"]), a.kind, "kill_switch")))
            self._save(state)
        return out

    # ----- internals ------------------------------------------------------------------------------------

    def _load(self, merchant_id: str) -> MerchantState:
        raw = self.store.get(merchant_id)
        if raw is None:
            self._hot.pop(merchant_id, None)
            return MerchantState(merchant_id)
        if isinstance(raw, MerchantState):
            return raw
        hot = self._hot.get(merchant_id)
        if hot is not None and hot[0] is raw:
            return hot[1]
        return MerchantState.from_bytes(raw)

    def _save(self, state: MerchantState) -> None:
        if self._objects:
            self.store[state.merchant_id] = state
            return
        raw = state_bytes(state)
        self.store[state.merchant_id] = raw
        if len(self._hot) >= self.hot_size and state.merchant_id not in self._hot:
            self._hot.pop(next(iter(self._hot)))
        self._hot[state.merchant_id] = (raw, state)

    def _portfolio_effects(self, state: MerchantState, release: tuple[str, int]) -> None:
        """Repayments, repaid and charged-off loans reduce the category exposure the portfolio cap counts by what
        the loan's offer reserved (its principal, released once however repayments split between fee and
        principal), in the category the loan's exposure was reserved in (MerchantState.release_of), not the
        merchant's current one: after a merchant.updated moved the merchant, releasing under the new category
        would leave the old counter high for good and push the new one down below what it holds."""
        category, amount = release
        self.portfolio.release(category, state.currency, amount)

    def _score(self, features: list[float]) -> Score:
        score = self.scorer.score(features)
        if self.challenger is not None:
            shadow = self.challenger.score(features)
            agree = base_rate_bps(score.pd, self.policy) == base_rate_bps(shadow.pd, self.policy)
            self.metrics.shadow(agree, abs(score.pd - shadow.pd))
        return score

    def _decide(self, state: MerchantState, as_of: int, trigger_id: str, trigger: str) -> list[dict[str, Any]]:
        state.last_scored = as_of
        if state.pending:
            state.pending = []  # this decision reflects every event applied so far
        if not state.currency:
            return []  # nothing priced yet: no decision can be expressed in money
        when = datetime.fromtimestamp(as_of, UTC)
        features = compute_features(state, when)
        # PD first; model reason codes (pred_contrib, the costly part) only when something is emitted.
        # Emission thresholds therefore compare policy reasons, not the model's shifting top features.
        pd_only = getattr(self.scorer, "pd_only", None)
        score = Score(pd_only(features), [], self.scorer.version) if pd_only else self._score(features)
        d = decide_limit(state, features, score.pd, [], as_of, self.policy)
        self.metrics.scored(trigger, score.pd, d.limit)
        actions = decide_actions(state, d, score.pd, as_of, self.policy, self.portfolio,
                                 lambda kind: deterministic_id(trigger_id, kind))
        if not actions:
            return []
        if pd_only:
            score = self._score(features)
        d = replace(d, reasons=merge_reasons(list(d.reasons), score.reasons))
        return [self._event(state, a, d, score, when, trigger_id) for a in actions]

    def _event(self, state: MerchantState, a: Action, d: Any, score: Score, when: datetime,
               trigger_id: str) -> dict[str, Any]:
        cur = state.currency

        def money(amount: int) -> dict[str, Any]:
            return {"amount": int(amount), "currency": cur}

        reasons = [r.to_json() for r in d.reasons]
        pd = round(float(score.pd), 6)
        if a.kind == "credit_limit.updated":
            data: dict[str, Any] = {
                "limit": money(d.limit), "available": money(d.available), "outstanding": money(d.outstanding),
                "eligible_receivables": money(d.eligible), "pd": pd, "model_version": score.model_version,
                "reasons": reasons, "trigger_event_id": trigger_id, "advance_rate_bps": d.advance_rate_bps,
            }
        elif a.kind == "loan_offer.created":
            o = a.data["offer"]
            data = {
                "offer_id": o.offer_id, "amount": money(o.amount), "fee": money(o.fee), "apr": o.apr,
                "due_at": _rfc(o.due_at), "expires_at": _rfc(o.expires_at), "order_ids": list(o.order_ids),
                "pd": pd, "model_version": score.model_version, "reasons": reasons, "limit": money(d.limit),
                "trigger_event_id": trigger_id,
            }
        else:
            data = {
                "offer_id": a.data["offer_id"], "reasons": [r.to_json() for r in a.data["reasons"]],
                "pd": pd, "model_version": score.model_version, "limit": money(d.limit),
                "trigger_event_id": trigger_id,
            }
        self.metrics.decision(a.kind)
        return new_event(a.kind, state.merchant_id, data, when, self.settings.source,
                         id=deterministic_id(trigger_id, a.kind))


def _rfc(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
