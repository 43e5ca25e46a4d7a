"""Per-merchant underwriting state, updated from marketplace and loans.v1 events (stdlib only).

Everything is kept in event time (epoch seconds) so late and out-of-order events land where they belong
and a replay rebuilds the same state. Every collection is bounded so one merchant's state stays small:
it is serialised compactly by `to_dict`/`to_bytes` for the Faust table and its changelog.

What a stream from outside can do to it (each rule has a scenario test in test_underwriter_stream_attacks.py):
- an event that does not fit the schema's shapes (an id, order id or loan id that is not a string, an amount out
  of 0..10^15, an unknown currency or status, data that is not an object) is refused with StateError and leaves
  the state as it was; so is money in another currency than the merchant's (the first one seen, normally the
  onboarding's: a re-onboarding in another currency is refused while the merchant has history in the old one);
- an order placed again (a fresh event id) counts once; its receivable is the smallest amount placed or paid;
  a settlement re-sent or listing an order twice counts the order's money once; a zero-amount order counts
  nothing; a chargeback or refund seen before its order keeps the order out of the receivables;
- a refund, chargeback or settlement re-sent under a fresh event id counts once per (order_id, refund_id) /
  (order_id, chargeback_id) / settlement_id (as disbursement counts them: ids numbered per order), at its old time or a new one, for as long as the limit reads what
  it counted (32 days for refunds, 90 for settlements and chargebacks: see `counted` for the bound);
- events older than the 90-day window (late) add no bucket, events of an order older than 60 days no
  receivable; orders known only from later events (a refund of an order settled and forgotten long ago) are
  dropped after two days and go first when the receivable table is full; the orders a loan financed go last
  while any loan is open (`_eviction_order`);
- loans.v1 is idempotent per loan: a repeated or early loan.repaid / loan.charged_off counts once, a
  loan.disbursed seen after its loan closed revives nothing, and one re-sent (a fresh event id) while its loan is
  open changes nothing (its repayments and days past due stand: the limit stays frozen while it is delinquent);
  a loan.repayment_applied re-sent (same loan_id and settlement_id) reduces nothing and releases nothing again;
- status is "" until merchant.onboarded (or a status update): the policy lends nothing to a merchant before its
  merchant.onboarded (`onboarded`), whatever status and category merchant.updated events set; status and category each follow the
  update with the latest event time (`profile_ts`): a stale "active" re-sent after a suspension lifts nothing;
- tenure (`since`) rests on activity seen, not on the time an event claims (`_tenure`): an event more than
  WINDOW_DAYS older than the latest one seen (a backfill bug, a record produced straight to the topic) moves it
  back not at all, merchant.onboarded included; a silence longer than WINDOW_DAYS starts it again;
- cancellations count once per order, by number and by the order's amount (CANCEL_GMV), so orders of 1 cent
  padding the history do not dilute the cancellation guard; a settlement counts an order's money up to what the
  order sold for; an order shipped again keeps its first shipment (a parcel that never arrives stops counting
  on time), and one delivered without an order.shipped counts as shipped by its delivery;
- the buyer sample leaves out orders below a quarter of the typical order (`_sampled`: the smaller of the 7-day
  average and the median day's average, so a few large wholesale orders do not push ordinary ones out), so dozens of
  1-cent orders from fresh buyer accounts cannot crowd a self-dealer's own few accounts out of it (which orders
  enter it then depends on what was applied before them, no longer on the order ids alone);
- a loan.repaid for a loan never seen disbursed here (another merchant's, or before its disbursement) keeps the
  loan closed but counts as an on-time repayment only once its loan.disbursed shows the due date;
- a chargeback closes its order's receivable whatever its amount; a refund re-sent under its id with a larger
  amount leaves the order at most what is left after that amount (its rates still count it once);
- a charge-off is never pushed out of the bounded loan history (`_history`); a loan.delinquent for a loan never
  seen disbursed books it from the notice (`_delinquent`); a loan.disbursed without order_ids marks as financed
  every receivable placed by the time its offer was made (`_financed_unnamed`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.common.money import CURRENCY_EXPONENTS, MAX_AMOUNT
from services.common.timeutil import parse_rfc3339

DAY = 86_400
WINDOW_DAYS = 90

# Daily bucket layout: one list of ints per epoch day.
PLACED_GMV, PLACED_N, SETTLED_GMV, SETTLED_N, REFUND_N, REFUND_GMV, CANCEL_N, CHARGEBACK_N, CHARGEBACK_GMV, \
    LAG_HOURS, LAG_N, CANCEL_GMV = range(12)
BUCKET_FIELDS = 12  # buckets saved before CANCEL_GMV existed (11 fields) load with a zero there

# Receivable layout: [amount, flags, placed_ts, shipped_ts, delivery_ts, refunded, closed_ts]
R_AMOUNT, R_FLAGS, R_PLACED, R_SHIPPED, R_DELIVERY, R_REFUNDED, R_CLOSED = range(7)
F_PLACED, F_PAID, F_SHIPPED, F_DELIVERED, F_SETTLED, F_CANCELLED, F_REFUNDED = 1, 2, 4, 8, 16, 32, 64
F_FINANCED = 128  # a disbursed loan advances against it: it cannot back a second loan
F_TERMINAL = F_SETTLED | F_CANCELLED | F_REFUNDED

# Loan layout: [disbursed_ts, owed, remaining, due_ts, days_past_due, category, held]. The category is the one its
# offer's exposure was reserved in (the portfolio's per-category counter): repayments and charge-offs release it
# there even after a merchant.updated changed the merchant's category (rows saved before it have five fields).
# `held` is the exposure the loan still holds there: its principal (what its offer reserved) at disbursement, then
# min(held, remaining) after each repayment, so fee and principal repaid in any split release exactly the principal
# in all, and a repayment re-sent (same remaining) releases nothing; the charge-off or repayment of the loan releases
# what is still held. Rows saved before it existed (five or six fields) release what `release_of` says for them.
L_TS, L_OWED, L_REMAINING, L_DUE, L_DPD, L_CAT, L_HELD = range(7)
# Offer layout (`MerchantState.offer`): [offer_id, amount, created_ts, expires_ts, guard codes, category reserved in]
O_CAT = 5
# Where the last offer record starts in `MerchantState.last` (policy.LAST_OFFER_AT; policy imports this module).
_LAST_OFFER_AT = 3
# Loan history layout: [ts, on_time (1/0), kind, loan id hash]; kind 1 = repaid, 2 = charged off. The hash makes
# loans.v1 idempotent per loan: a repeated or late loan.repaid / loan.charged_off counts once, and a loan.disbursed
# seen after its loan closed does not revive the debt (rows saved before the hash existed have three fields).
# Kind 3 = repaid before the state saw the loan disbursed (a loan.repaid naming a loan this merchant never had, e.g.
# another merchant's, or one that arrived before its disbursement): it keeps the loan closed, but counts as neither
# repaid nor charged off (nothing says whether it was on time) until its loan.disbursed shows the due date.
KIND_REPAID, KIND_CHARGED_OFF, KIND_REPAID_UNSEEN = 1, 2, 3
_FORGET_FIRST = {KIND_REPAID_UNSEEN: 0, KIND_REPAID: 1}  # which loan history rows go first when it is full

MAX_RECEIVABLES = 200
MAX_BUYER_SAMPLE = 66
BUYERS_PER_DAY = 2
BUYER_WINDOW_DAYS = 30
SAMPLE_MIN_TICKET_DIVISOR = 4  # orders below a quarter of the typical order (see `_sampled`) stay out of the buyer sample
MAX_CLOSED_IDS = 64
MAX_SEEN = 48
MAX_LOANS = 64  # open advances; a merchant taking every offer can hold dozens at once
MAX_LOAN_HISTORY = 24
# Refund, chargeback and settlement ids counted (see `MerchantState.counted`).
HASH_HEX = 8  # closed orders and counted ids: 32-bit hashes, as 8 hex digits
MAX_COUNTED_IDS = 160
# Days an id is kept, by kind (two spare days, as for closed receivables): refunds are read over 30 days (refund
# rates, REFUND_SURGE), chargebacks over 90 (chargeback rate, CHARGEBACKS), settlements over 90 (settled_gmv_90d,
# settled_orders_90d, the 90-day placed/settled conversion; the caps and guards read 30): a settlement re-sent under
# a new id any time its original still counts counts nothing (~300 bytes of saved state for a merchant settled daily).
COUNTED_DAYS = {"r": 30 + 2, "c": WINDOW_DAYS, "s": WINDOW_DAYS, "S": WINDOW_DAYS}
# Settlement ids of weeks older than SHORT_AFTER_DAYS (read by the two 90-day features only) are kept as 16-bit
# hashes (the first 4 of their 8 hex digits) under "S<week>": ~120 bytes less state for a merchant settled daily. A
# settlement matching only such a short hash counts no settled sales again but still closes its orders, so a
# distinct one mistaken for it (odds ~1 in 1,000 with 60 such ids) understates settled sales, never more.
SHORT_AFTER_DAYS, SHORT_HEX = 30 + 2, 4
# Event ids applied (`MerchantState.seen`): 40-bit hashes (the top 40 bits of `short_hash`), 10 hex digits each.
SEEN_HEX = 10
CLOSED_RETENTION = 2 * DAY  # closed receivables stay visible this long, so features as of t are stable
RECEIVABLE_HORIZON = 60 * DAY  # an order older than this (event time) is never tracked as a receivable

MARKETPLACE = frozenset({
    "merchant.onboarded", "merchant.updated", "order.placed", "order.paid", "order.shipped",
    "order.delivered", "order.cancelled", "order.refunded", "order.chargeback", "settlement.paid",
})
LOAN_EVENTS = frozenset({
    "loan_offer.accepted", "loan.disbursed", "loan.repayment_applied", "loan.repaid",
    "loan.delinquent", "loan.charged_off", "loan.cancelled",
})
HANDLED = MARKETPLACE | LOAN_EVENTS


STATUSES = frozenset({"active", "suspended", "closed"})


def _id(value: Any) -> str:
    """An order or loan id as the schema has it: a non-empty string (anything else is refused)."""
    if type(value) is not str or not value:
        raise ValueError(f"bad id {str(value)[:140]!r}")
    return value


def _packed_has(packed: str, h: str, width: int = HASH_HEX) -> bool:
    """Whether the hex hash `h` is one of the `width`-digit hashes concatenated in `packed`."""
    at = packed.find(h)
    while at >= 0:
        if at % width == 0:
            return True
        at = packed.find(h, at + 1)
    return False


def _seen_hash(event_id: str) -> str:
    """The top 40 bits of `short_hash(event_id)` as 10 hex digits (the first 5 bytes of the same digest)."""
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=6).hexdigest()[:SEEN_HEX]


def _packed_seen(saved: Any) -> str:
    """`seen` as saved: packed hex, or the list of 48-bit `short_hash` ints states held before (same top bits)."""
    if isinstance(saved, str):
        return saved
    return "".join(f"{h >> 8:010x}" for h in saved[-MAX_SEEN:])


def _closed_hash(order_id: str) -> str:
    return f"{short_hash(order_id) >> 16:08x}"


def _packed_closed(saved: Any) -> str:
    """`closed` as saved: packed hex, or the list of 48-bit `short_hash` ints states held before (same top bits)."""
    if isinstance(saved, str):
        return saved
    return "".join(f"{h >> 16:08x}" for h in saved[-MAX_CLOSED_IDS:])


class StateError(ValueError):
    """An event that cannot be applied (missing subject, wrong merchant, malformed data)."""


def event_ts(value: str) -> int:
    """Epoch seconds of an RFC 3339 event time. The usual "YYYY-MM-DDTHH:MM:SSZ" shape takes a fast path with
    the same result; anything else goes through the full parser (and its errors)."""
    if (type(value) is str and len(value) == 20 and value[19] == "Z" and value[10] == "T"
            and value[4] == value[7] == "-" and value[13] == value[16] == ":"
            and (value[:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16] + value[17:19]).isdigit()
            and value.isascii()):
        return (date(int(value[:4]), int(value[5:7]), int(value[8:10])).toordinal() - _EPOCH_ORDINAL) * DAY \
            + _hms(int(value[11:13]), int(value[14:16]), int(value[17:19]))
    return int(parse_rfc3339(value).timestamp())


def _hms(h: int, m: int, s: int) -> int:
    if h > 23 or m > 59 or s > 59:
        raise ValueError(f"not an RFC 3339 time of day: {h:02d}:{m:02d}:{s:02d}")
    return h * 3600 + m * 60 + s


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def short_hash(value: str, size: int = 6) -> int:
    """A small stable integer for ids we only need to compare (buyers, event ids, closed orders)."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=size).digest(), "big")


@dataclass(slots=True)
class MerchantState:
    merchant_id: str
    currency: str = ""
    category: str = ""
    status: str = ""  # "" until merchant.onboarded (or a status update) arrives: never lent to before
    since: int = 0  # first event time (onboarding when seen), epoch seconds
    latest: int = 0  # latest event time applied
    buckets: dict[int, list[int]] = field(default_factory=dict)
    # Sorted [day, order hash, buyer hash] of up to two orders a day over 30 days: buyer diversity by event time.
    buyers: list[list[int]] = field(default_factory=list)
    receivables: dict[str, list[int]] = field(default_factory=dict)
    # Orders closed long ago, never resurrected: the last MAX_CLOSED_IDS, as 32-bit hashes (`_closed_hash`, 8 hex
    # digits each) concatenated, ~40% smaller saved than a list of ints (states saved as a list are converted).
    closed: str = ""
    loans: dict[str, list[Any]] = field(default_factory=dict)  # L_* layout (ints, then the category)
    loan_history: list[list[int]] = field(default_factory=list)
    worst_dpd: int = 0
    worst_dpd_ts: int = 0
    # Open offer: [offer_id, amount, created_ts, expires_ts, guard codes, category reserved in] or empty.
    offer: list[Any] = field(default_factory=list)
    # The offer last accepted and not yet disbursed, [offer_id, category its exposure was reserved in, amount
    # reserved] (states saved before the amount have two fields), or empty: the loan.disbursed that follows books
    # the loan under that category; a loan.cancelled releases the amount there.
    accepted: list[Any] = field(default_factory=list)
    # Last emitted decision: [limit, available, reason codes joined by ","].
    last: list[Any] = field(default_factory=list)
    last_scored: int = 0
    # Event ids applied, the last MAX_SEEN, as 40-bit hashes (`_seen_hash`, 10 hex digits each) concatenated (states
    # saved with a list of 48-bit ints are converted): a fresh id is mistaken for one of them with odds of 1 in 23e9.
    seen: str = ""
    # Input position last applied, by source ("topic:partition" -> offset): a worker that restores this state
    # from the changelog and re-reads records the state already holds (its input offsets were committed
    # after the state was written) skips them, however many there are; `seen` only remembers MAX_SEEN ids.
    positions: dict[str, int] = field(default_factory=dict)
    # Debounce marker, [first pending event time, latest pending event time, latest pending event id], or empty:
    # events applied here that no decision reflects yet (the core sets it when it leaves the merchant undecided
    # and clears it when it decides). Saved with the state, so a worker that restores the state after a stop,
    # a crash or a rebalance knows the merchant still waits for its debounced decision.
    pending: list[Any] = field(default_factory=list)
    # Refund, chargeback and settlement ids counted: "<kind><week>" (kind r, c or s; week = epoch day // 7 of the
    # bucket the event counted in) -> the 32-bit hashes of the ids, as 8 hex digits each, concatenated. One re-sent
    # under a fresh event id (at its old time or a new one) is found here and counts nothing. An id is kept as long
    # as the caps, guards and features read what it counted (COUNTED_DAYS: 32 days for refunds, 90 for settlements
    # and chargebacks): its week goes once all of it is older than that, so within that window a re-send never
    # counts twice (after it, the original no longer counts there either). At most MAX_COUNTED_IDS are kept, the
    # oldest week's first when a stream sends more (~0.9 KB of saved state then; ~5.5 bytes an id, ~500 bytes for
    # a merchant settled daily with a few refunds): a merchant settled several times a day keeps its latest
    # settlements' ids, and one re-sent after its id was pushed out counts again. A distinct id is
    # mistaken for a counted one (and not counted) with odds of at most 160 / 2^32 (1 in 27 million) per event.
    counted: dict[str, str] = field(default_factory=dict)
    # Event times of the status and the category in force, [status_ts, category_ts] (empty until a merchant.updated
    # or an onboarding sets one): an update older than the one in force is stale and changes nothing, so a late or
    # re-sent "active" cannot lift a later suspension, nor an old onboarding undo a later category change.
    profile_ts: list[int] = field(default_factory=list)
    # Whether a merchant.onboarded was applied: only the onboarding (country, currency) makes a merchant one the
    # policy lends to; a merchant.updated setting status and category does not. Saved only where it tells something
    # status and category do not ("g": 0 for a merchant with both but never onboarded): a state saved before this
    # existed loads as onboarded when it has both, as the policy judged it then.
    onboarded: bool = False

    # ----- serialisation ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": self.merchant_id, "c": self.currency, "k": self.category, "s": self.status,
            "t0": self.since, "t1": self.latest,
            # A bucket without cancelled money is saved without its last field (most are; it loads as 0).
            "b": [[d, *v] if v[CANCEL_GMV] else [d, *v[:CANCEL_GMV]] for d, v in sorted(self.buckets.items())],
            "u": self.buyers, "r": self.receivables, "x": self.closed,
            "l": self.loans, "h": self.loan_history, "w": [self.worst_dpd, self.worst_dpd_ts],
            "o": self.offer, "d": self.last, "q": self.last_scored, "e": self.seen,
        } | ({"p": self.positions} if self.positions else {}) | ({"n": self.pending} if self.pending else {}) \
            | ({"i": self.counted} if self.counted else {}) \
            | ({"a": self.accepted} if self.accepted else {}) | ({"v": self.profile_ts} if self.profile_ts else {}) \
            | ({"g": 0} if self.status and self.category and not self.onboarded else {})

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> MerchantState:
        try:
            return cls(
                merchant_id=obj["m"], currency=obj["c"], category=obj["k"], status=obj["s"],
                since=obj["t0"], latest=obj["t1"],
                buckets={b[0]: b[1:] if len(b) > BUCKET_FIELDS else b[1:] + [0] * (BUCKET_FIELDS + 1 - len(b))
                         for b in obj["b"]},
                buyers=obj["u"], receivables=obj["r"], closed=_packed_closed(obj["x"]),
                loans=obj["l"], loan_history=obj["h"], worst_dpd=obj["w"][0], worst_dpd_ts=obj["w"][1],
                offer=obj["o"], last=obj["d"], last_scored=obj["q"], seen=_packed_seen(obj["e"]),
                positions=dict(obj.get("p") or {}), pending=list(obj.get("n") or ()),
                counted=dict(obj.get("i") or {}), accepted=list(obj.get("a") or ()),
                profile_ts=list(obj.get("v") or ()),
                onboarded=bool(obj["g"]) if "g" in obj else bool(obj["s"] and obj["k"]),
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise StateError(f"malformed merchant state: {exc!r}") from None

    def to_bytes(self, dumps: Callable[[dict[str, Any]], bytes] | None = None) -> bytes:
        """zlib (level 1: halves the size for little CPU) of the compact JSON of `to_dict`; the table and its
        changelog hold this. `dumps` may supply a faster JSON encoder (the service passes orjson), which must
        write JSON that `from_bytes` reads back to the same state."""
        text = dumps(self.to_dict()) if dumps is not None else \
            json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")
        return zlib.compress(text, 1)

    @classmethod
    def from_bytes(cls, raw: bytes) -> MerchantState:
        return cls.from_dict(json.loads(zlib.decompress(raw)))

    @staticmethod
    def may_be_pending(raw: bytes) -> bool:
        """A cheap test on saved bytes: False when the state surely holds no debounce marker (no JSON decode;
        a True may be a false positive, so decode and check `pending`)."""
        return b'"n":[' in zlib.decompress(raw)

    @staticmethod
    def may_hold_offer(raw: bytes) -> bool:
        """A cheap test on saved bytes: False when the state surely holds no open offer (no JSON decode)."""
        return b'"o":[]' not in zlib.decompress(raw)

    # ----- dedupe ----------------------------------------------------------------------------------------

    def already_applied(self, source: str, position: int) -> bool:
        """True when the record at `position` of `source` (or a later one) was already applied to this state."""
        return self.positions.get(source, -1) >= position

    def advance(self, source: str, position: int) -> None:
        if position > self.positions.get(source, -1):
            self.positions[source] = position

    def mark_seen(self, event_id: str) -> bool:
        """Record an event id; False when it was already seen (the event must be ignored)."""
        h = _seen_hash(event_id)
        if _packed_has(self.seen, h, SEEN_HEX):
            return False
        self._remember(h)
        return True

    def _remember(self, h: str) -> None:
        seen = self.seen + h
        self.seen = seen if len(seen) <= MAX_SEEN * SEEN_HEX else seen[-MAX_SEEN * SEEN_HEX:]

    # ----- apply -----------------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one CloudEvent; returns False for duplicates and types the underwriter ignores."""
        return self.apply_ts(event) is not None

    def apply_ts(self, event: dict[str, Any]) -> int | None:
        """`apply`, returning the event time applied (epoch seconds), or None for a duplicate or ignored type."""
        etype = event.get("type")
        if etype not in HANDLED:
            return None
        if event.get("subject") != self.merchant_id:
            raise StateError(f"event {event.get('id')!r} is for {event.get('subject')!r}, not {self.merchant_id!r}")
        eid = event.get("id")
        if type(eid) is not str or not (0 < len(eid) <= 128 and eid.isascii() and eid.isprintable()) or " " in eid:
            # the schema's Id: decisions name it as their trigger, and it is the dedupe key
            raise StateError(f"event id {str(eid)[:140]!r} is not an identifier")
        h = _seen_hash(eid)
        if _packed_has(self.seen, h, SEEN_HEX):
            return None
        # Handlers read and check all their inputs before changing anything, and the id is remembered only
        # once the event applied: a rejected event leaves the state as it was (the core keeps live objects).
        try:
            ts = event_ts(event["time"])
            data = event.get("data") or {}
            _HANDLERS[etype](self, data, ts)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: data not an object
            raise StateError(f"cannot apply {etype} {eid!r}: {exc!r}") from None
        self._remember(h)
        self._tenure(ts)
        if ts > self.latest:
            if ts // DAY != self.latest // DAY:
                self._prune(ts)
            self.latest = ts
        return ts

    def _tenure(self, ts: int) -> None:
        """Move the tenure anchor `since` for an event applied at `ts` (before `latest` moves).

        Tenure rests on activity the state has seen, not on whatever time an event claims: the first event sets
        `since`; a later event moves it back only when it is less than WINDOW_DAYS older than the latest event
        seen (an event dated years back, produced straight to the topic or by a marketplace's backfill bug,
        moves nothing, whatever its type, merchant.onboarded included); and an event more than WINDOW_DAYS after
        the latest one seen (a silence longer than every feature window, or a first event dated long ago) starts
        tenure again at that event: nothing the state saw before it is in any window any more."""
        if not self.since:
            self.since = ts
        elif ts < self.since:
            if ts > self.latest - WINDOW_DAYS * DAY:
                self.since = ts
        elif ts > self.latest + WINDOW_DAYS * DAY:
            self.since = ts

    def _prune(self, now: int) -> None:
        first_day = now // DAY - WINDOW_DAYS
        for day in [d for d in self.buckets if d <= first_day]:
            del self.buckets[day]
        today = now // DAY
        for key in [k for k in self.counted if int(k[1:]) * 7 + 6 <= today - COUNTED_DAYS[k[0]]]:
            del self.counted[key]
        for key in [k for k in self.counted if k[0] == "s" and int(k[1:]) * 7 + 6 <= today - SHORT_AFTER_DAYS]:
            packed, short = self.counted.pop(key), "S" + key[1:]
            self.counted[short] = self.counted.get(short, "") + "".join(
                packed[at:at + SHORT_HEX] for at in range(0, len(packed), HASH_HEX))
        # Two spare days keep features as of a recent past time stable (same retention as closed receivables).
        self.buyers = [b for b in self.buyers if b[0] > now // DAY - BUYER_WINDOW_DAYS - 2]
        stale, horizon = now - CLOSED_RETENTION, now - RECEIVABLE_HORIZON
        for oid, rec in list(self.receivables.items()):
            placed, closed = rec[R_PLACED], rec[R_CLOSED]
            # An order known only from later events (shipped, delivered, refunded, charged back: typically a
            # return of an order settled and forgotten long ago) is kept only as long as a closed one, so such
            # phantoms never pile up and crowd real receivables out of the bounded table.
            if (closed and closed < stale) or (placed and placed < horizon) \
                    or (not placed and not closed and max(rec[R_SHIPPED], rec[R_DELIVERY]) < stale):
                self._forget(oid)

    def _forget(self, order_id: str) -> None:
        self.receivables.pop(order_id, None)
        h = _closed_hash(order_id)
        if not _packed_has(self.closed, h):
            self.closed = (self.closed + h)[-MAX_CLOSED_IDS * HASH_HEX:]

    def bucket(self, ts: int) -> list[int]:
        day = ts // DAY
        b = self.buckets.get(day)
        if b is None:
            if day <= self.latest // DAY - WINDOW_DAYS:
                return [0] * BUCKET_FIELDS  # a late event older than the window: no feature reads that day
            b = self.buckets[day] = [0] * BUCKET_FIELDS
        return b

    def _money(self, obj: dict[str, Any]) -> int:
        """The amount of a Money object in the merchant's currency (the first one seen sets it): an amount out
        of the schema's range or in another currency is refused, never summed with the merchant's own."""
        amount, currency = obj["amount"], obj["currency"]
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
            raise ValueError(f"bad amount {amount!r}")
        if currency != self.currency:
            if self.currency:
                raise ValueError(f"currency {currency!r} is not the merchant's {self.currency!r}")
            if type(currency) is not str or currency not in CURRENCY_EXPONENTS:
                raise ValueError(f"unknown currency {currency!r}")
            self.currency = currency
        return amount

    def _receivable(self, order_id: str, ts: int) -> list[int] | None:
        """The order's receivable, created on first sight; None when the order was closed long ago, or when the
        event (`ts`) is older than any receivable the state tracks (a late event of an order that can no
        longer be financed)."""
        rec = self.receivables.get(order_id)
        if rec is None:
            if ts < self.latest - RECEIVABLE_HORIZON or _packed_has(self.closed, _closed_hash(order_id)):
                return None
            if ts < self.latest - CLOSED_RETENTION and len(self.closed) >= MAX_CLOSED_IDS * HASH_HEX:
                # First seen long after it happened, once closed orders have been forgotten (the bounded list is
                # full): it may have settled, been cancelled or refunded already. Never a receivable (a backfill
                # of orders paid out weeks ago must not be lent against again).
                return None
            if len(self.receivables) >= MAX_RECEIVABLES:
                self._forget(min(self.receivables, key=self._eviction_order))
            rec = self.receivables[order_id] = [0, 0, 0, 0, 0, 0, 0]
        return rec

    def _eviction_order(self, order_id: str) -> tuple[int, int]:
        """When the table is full: closed receivables go first, then orders never placed here (known only from
        later events, or paid and shipped without their order.placed: no receivable the policy lends against),
        then the oldest open ones, and the open ones a loan financed last while any loan is open. Those are the
        oldest (an offer finances the receivables that settle soonest), so a merchant with many orders would
        otherwise lose them first: the limit counts them (limit - outstanding would then count the open loan
        twice and withdraw offers for nothing), and their mark is what keeps them from backing a second loan."""
        rec = self.receivables[order_id]
        flags = rec[R_FLAGS]
        rank = 0 if rec[R_CLOSED] else 1 if not flags & F_PLACED else 3 if flags & F_FINANCED and self.loans else 2
        return rank, rec[R_PLACED]

    @staticmethod
    def _counted_hash(kind: str, value: Any, order_id: str | None = None) -> str | None:
        """The hash a refund ("r"), chargeback ("c") or settlement ("s") id is remembered under; None for an event
        without one (not the schema's shape, but such hand-built events still count, by their orders alone).
        Refund and chargeback ids are scoped by their order (`order_id`): marketplaces number them per order ("1"
        for each order's first chargeback), as disbursement keys them ("<order_id>:<ref>"). States saved before
        hold merchant-wide hashes (no order) under the same keys: those match no per-order id and age out with
        their week, so a refund or chargeback counted before the change and re-sent under a fresh event id after
        it counts once more (the rates read high for at most their window, never low)."""
        if value is None:
            return None
        scoped = _id(value) if order_id is None else f"{order_id}\n{_id(value)}"
        return hashlib.blake2b(f"{kind}:{scoped}".encode(), digest_size=HASH_HEX // 2).hexdigest()

    def _was_counted(self, kind: str, h: str | None) -> bool:
        if h is None:
            return False
        for key, packed in self.counted.items():
            if key[0] != kind:
                continue
            if _packed_has(packed, h):
                return True
        return False

    def _settlement_short_counted(self, h: str | None) -> bool:
        """Whether `h` matches a settlement id kept short (an old week's: see SHORT_AFTER_DAYS)."""
        if h is None:
            return False
        short = h[:SHORT_HEX]
        return any(key[0] == "S" and _packed_has(packed, short, SHORT_HEX) for key, packed in self.counted.items())

    def _count(self, kind: str, h: str | None, ts: int) -> None:
        """Remember `h` as counted in the bucket of `ts` (not for an event too old to be read: it counts nowhere
        that matters, and a re-send at a newer time may count once)."""
        day = ts // DAY
        if h is None or day <= max(self.latest, ts) // DAY - COUNTED_DAYS[kind]:
            return
        key = f"{kind}{day // 7}"
        self.counted[key] = self.counted.get(key, "") + h
        if sum(map(len, self.counted.values())) > MAX_COUNTED_IDS * HASH_HEX:
            oldest = min(self.counted, key=lambda k: (int(k[1:]), k))
            self.counted[oldest] = self.counted[oldest][SHORT_HEX if oldest[0] == "S" else HASH_HEX:]
            if not self.counted[oldest]:
                del self.counted[oldest]

    def _close(self, rec: list[int], flag: int, ts: int) -> None:
        rec[R_FLAGS] |= flag
        if not rec[R_CLOSED] or ts < rec[R_CLOSED]:
            rec[R_CLOSED] = ts

    # --- marketplace handlers ---

    def _onboarded(self, data: dict[str, Any], ts: int) -> None:
        currency, category = data["currency"], data["category"]
        if not (type(category) is str and category):
            raise ValueError(f"bad category {category!r}")
        if currency != self.currency:
            if type(currency) is not str or currency not in CURRENCY_EXPONENTS:
                raise ValueError(f"unknown currency {currency!r}")
            if self.currency and (self.buckets or self.receivables or self.loans):
                # Its history is in the old currency: mixing the two would misstate every amount.
                raise ValueError(f"currency change from {self.currency!r} to {currency!r} while the merchant "
                                 "has sales or advances in the old one")
        self.currency = currency
        if self._newer(1, ts):
            # The onboarding's time is kept too: an update dated before it (re-sent late) is then stale; a
            # category change dated after this onboarding stays in force.
            self.category = category
        if not self.status:
            self.status = "active"  # a status update seen before the (late) onboarding stays in force
        self.onboarded = True

    def _updated(self, data: dict[str, Any], ts: int) -> None:
        """Each of status and category follows the update with the latest event time (see `profile_ts`)."""
        category, status = data.get("category", self.category), data.get("status", self.status)
        if "category" in data and not (type(category) is str and category):
            raise ValueError(f"bad category {category!r}")
        if "status" in data and status not in STATUSES:
            raise ValueError(f"bad status {status!r}")
        if "status" in data and self._newer(0, ts):
            self.status = status
        if "category" in data and self._newer(1, ts):
            self.category = category

    def _newer(self, at: int, ts: int) -> bool:
        """Whether an update at `ts` of the profile field `at` (0 status, 1 category) is not older than the one in
        force; if so it becomes the one in force."""
        times = self.profile_ts
        if not times:
            times = self.profile_ts = [0, 0]
        if ts < times[at]:
            return False
        times[at] = ts
        return True

    def _placed(self, data: dict[str, Any], ts: int) -> None:
        order_id, buyer_id, amount = _id(data["order_id"]), str(data["buyer_id"]), self._money(data["amount"])
        # A zero-amount order sells nothing: it is not counted (it would only dilute the refund, cancellation and
        # chargeback rates and the buyer sample), and nothing is tracked for it that is not tracked already.
        rec = self._receivable(order_id, ts) if amount else self.receivables.get(order_id)
        if rec is not None and rec[R_FLAGS] & F_PLACED:
            # The same order placed again (re-sent under a new event id, or amended): it counts once, from its
            # first placement, and its receivable never grows.
            rec[R_PLACED] = min(rec[R_PLACED], ts)
            rec[R_AMOUNT] = min(rec[R_AMOUNT], amount)
            return
        if amount:
            b = self.bucket(ts)
            b[PLACED_GMV] += amount
            b[PLACED_N] += 1
            if self._sampled(amount, ts // DAY):
                self._sample_buyer(ts // DAY, order_id, buyer_id)
        if rec is not None:
            rec[R_AMOUNT] = min(rec[R_AMOUNT], amount) if rec[R_FLAGS] & F_PAID else amount
            rec[R_PLACED] = ts
            if rec[R_FLAGS] & F_SETTLED and not rec[R_FLAGS] & F_PLACED and rec[R_CLOSED] >= ts:
                # its settlement arrived first: count the settlement lag now
                settled = self.bucket(rec[R_CLOSED])
                settled[LAG_HOURS] += (rec[R_CLOSED] - ts) // 3600
                settled[LAG_N] += 1
            if rec[R_FLAGS] & F_CANCELLED and not rec[R_FLAGS] & F_PLACED and rec[R_CLOSED]:
                self.bucket(rec[R_CLOSED])[CANCEL_GMV] += rec[R_AMOUNT]  # its cancellation arrived first
            rec[R_FLAGS] |= F_PLACED

    def _sampled(self, amount: int, day: int) -> bool:
        """Whether an order of `amount` placed on `day` enters the buyer sample: not when it is below
        1 / SAMPLE_MIN_TICKET_DIVISOR of the merchant's typical order over the 7 days to then. Orders of a few cents
        from fresh buyer accounts, placed by the dozen, would otherwise crowd a self-dealer's own few buyers out of
        the sample and hide their concentration; an honest merchant's orders that small are rare (and a first
        order, with no average yet, is always sampled). The typical order is the smaller of the 7-day average and
        the median of the days' own averages: a few large orders on some days (a wholesale buyer's) raise the
        average far above what the merchant usually sells, and would otherwise keep its ordinary orders, and
        their many buyers, out of the sample."""
        get = self.buckets.get
        gmv = n = 0
        for d in range(day - 6, day + 1):
            if (b := get(d)) is not None:
                gmv += b[PLACED_GMV]
                n += b[PLACED_N]
        if not n or amount * n * SAMPLE_MIN_TICKET_DIVISOR >= gmv:
            return True
        daily = sorted(b[PLACED_GMV] / b[PLACED_N] for d in range(day - 6, day + 1)
                       if (b := get(d)) is not None and b[PLACED_N])
        return amount * SAMPLE_MIN_TICKET_DIVISOR >= daily[(len(daily) - 1) // 2]

    def _sample_buyer(self, day: int, order_id: str, buyer_id: str) -> None:
        """Keep the BUYERS_PER_DAY orders of each day with the smallest order-id hash among those `_sampled`: a
        sample that later days never change."""
        buyers = self.buyers
        bisect.insort(buyers, [day, short_hash(order_id, 3), short_hash(buyer_id, 3)])
        # Sorted by day first: the day's entries are the contiguous run [first, end).
        first, end = bisect.bisect_left(buyers, [day]), bisect.bisect_left(buyers, [day + 1])
        if end - first > BUYERS_PER_DAY:
            del buyers[end - 1]
        if len(self.buyers) > MAX_BUYER_SAMPLE:
            del self.buyers[0]

    def _paid(self, data: dict[str, Any], ts: int) -> None:
        amount = self._money(data["amount"])
        rec = self._receivable(_id(data["order_id"]), ts)
        if rec is not None:
            # What the buyer paid is what is on its way: the receivable is the smaller of the placed and paid amounts.
            rec[R_AMOUNT] = min(rec[R_AMOUNT], amount) if rec[R_FLAGS] & (F_PLACED | F_PAID) else amount
            rec[R_FLAGS] |= F_PAID
            if not rec[R_PLACED]:
                rec[R_PLACED] = ts

    def _shipped(self, data: dict[str, Any], ts: int) -> None:
        expected = data.get("expected_delivery_at")
        expected_ts = int(parse_rfc3339(expected).timestamp()) if expected else 0
        rec = self._receivable(_id(data["order_id"]), ts)
        if rec is None:
            return
        if rec[R_FLAGS] & F_SHIPPED and rec[R_SHIPPED]:
            # Shipped again (re-sent, or the merchant re-marking it): the parcel left at its first shipment and is
            # due by the earliest delivery promised, so re-shipping a parcel that never arrives cannot keep it
            # looking on its way (eligible) past the overdue window.
            rec[R_SHIPPED] = min(rec[R_SHIPPED], ts)
            if expected_ts and rec[R_DELIVERY] and not rec[R_FLAGS] & F_DELIVERED:
                rec[R_DELIVERY] = min(rec[R_DELIVERY], expected_ts)
            return
        rec[R_FLAGS] |= F_SHIPPED
        rec[R_SHIPPED] = ts
        if expected_ts and not rec[R_FLAGS] & F_DELIVERED:
            rec[R_DELIVERY] = expected_ts

    def _delivered(self, data: dict[str, Any], ts: int) -> None:
        rec = self._receivable(_id(data["order_id"]), ts)
        if rec is not None:
            if not rec[R_FLAGS] & F_SHIPPED or rec[R_SHIPPED] > ts:
                rec[R_SHIPPED] = ts  # delivered, so shipped by then (a marketplace may send no order.shipped)
            rec[R_FLAGS] |= F_DELIVERED | F_SHIPPED
            rec[R_DELIVERY] = ts

    def _cancelled(self, data: dict[str, Any], ts: int) -> None:
        """Counted once per order (a cancellation re-sent under a new event id counts nothing), by number and by
        the order's amount (CANCEL_GMV: padding the history with tiny orders dilutes the count-based rate, not the
        money one); a cancellation seen before its order counts the amount when the order's placement arrives."""
        order_id = _id(data["order_id"])
        rec = self._receivable(order_id, ts)
        if rec is not None and rec[R_FLAGS] & F_CANCELLED:
            if ts < rec[R_CLOSED]:
                self._close(rec, F_CANCELLED, ts)
            return
        b = self.bucket(ts)
        b[CANCEL_N] += 1
        if rec is not None:
            if rec[R_FLAGS] & F_PLACED:
                b[CANCEL_GMV] += rec[R_AMOUNT]
            self._close(rec, F_CANCELLED, ts)

    def _refunded(self, data: dict[str, Any], ts: int) -> None:
        order_id, amount = _id(data["order_id"]), self._money(data["amount"])
        h = self._counted_hash("r", data.get("refund_id"), order_id)
        if self._was_counted("r", h):
            # The same refund re-sent under a new event id: the rates count it once. It may carry another amount
            # (the marketplace amended it): the order has been refunded at least that much, so its receivable
            # keeps at most what is left after the largest amount reported under the id, never less than before.
            rec = self.receivables.get(order_id)
            if rec is not None and amount > rec[R_REFUNDED]:
                rec[R_REFUNDED] = amount
                if rec[R_AMOUNT] and rec[R_REFUNDED] >= rec[R_AMOUNT]:
                    self._close(rec, F_REFUNDED, ts)
            return
        self._count("r", h, ts)
        b = self.bucket(ts)
        b[REFUND_N] += 1
        b[REFUND_GMV] += amount
        rec = self._receivable(order_id, ts)
        if rec is not None:
            rec[R_REFUNDED] += amount
            if rec[R_AMOUNT] and rec[R_REFUNDED] >= rec[R_AMOUNT]:
                self._close(rec, F_REFUNDED, ts)

    def _chargeback(self, data: dict[str, Any], ts: int) -> None:
        order_id, amount = _id(data["order_id"]), self._money(data["amount"])
        h = self._counted_hash("c", data.get("chargeback_id"), order_id)
        if self._was_counted("c", h):
            return  # the same chargeback re-sent under a new event id
        self._count("c", h, ts)
        b = self.bucket(ts)
        b[CHARGEBACK_N] += 1
        b[CHARGEBACK_GMV] += amount
        rec = self._receivable(order_id, ts)  # created when the order's own events come later: it stays closed
        if rec is not None:
            # A disputed order is no receivable, whatever part the chargeback names: its payout is contested.
            rec[R_REFUNDED] += amount
            self._close(rec, F_REFUNDED, ts)

    def _settled(self, data: dict[str, Any], ts: int) -> None:
        self._money(data["gross"])
        items = [(_id(item["order_id"]), self._money(item["amount"])) for item in data["orders"]]
        h = self._counted_hash("s", data.get("settlement_id"))
        if self._was_counted("s", h):
            return  # the same settlement re-sent under a new event id, after its orders' receivables were forgotten
        # One counted weeks ago (its id kept short): its sales count nothing again, its orders still close.
        count = not self._settlement_short_counted(h)
        if count:
            self._count("s", h, ts)
        b = self.bucket(ts)
        for order_id, amount in items:
            rec = self._receivable(order_id, ts)
            if rec is not None and rec[R_FLAGS] & F_SETTLED:
                continue  # settled already (the settlement re-sent under a new id, or the order listed twice)
            if rec is not None and rec[R_FLAGS] & (F_PLACED | F_PAID):
                amount = min(amount, rec[R_AMOUNT])  # an order settles as sales up to what it sold for
            if count:
                b[SETTLED_GMV] += amount
                b[SETTLED_N] += 1
            if rec is None:
                continue
            if count and rec[R_FLAGS] & F_PLACED and rec[R_PLACED] <= ts:
                b[LAG_HOURS] += (ts - rec[R_PLACED]) // 3600
                b[LAG_N] += 1
            self._close(rec, F_SETTLED, ts)

    # --- loans.v1 handlers ---

    def _offer_accepted(self, data: dict[str, Any], ts: int) -> None:
        if self.offer and self.offer[0] == data["offer_id"]:
            self.accepted = [self.offer[0], self._offer_category(self.offer), int(self.offer[1])]
            self.offer = []

    def _offer_category(self, offer: list[Any]) -> str:
        return str(offer[O_CAT]) if len(offer) > O_CAT else self.category

    def _disbursed(self, data: dict[str, Any], ts: int) -> None:
        principal = self._money(data["principal"])
        owed = principal + self._money(data["fee"])
        due = int(parse_rfc3339(data["due_at"]).timestamp())
        loan_id, order_ids = _id(data["loan_id"]), [_id(o) for o in data.get("order_ids") or ()]
        closed = self._closed_row(loan_id)
        if closed is not None:
            # Redelivered, or late after the loan's own repayment or charge-off: nothing is owed. A repayment seen
            # before it is now known to be on time or not.
            if closed[2] == KIND_REPAID_UNSEEN:
                closed[1:3] = [1 if closed[0] <= due else 0, KIND_REPAID]
            return
        # Booked in the category its offer reserved the exposure in (accepted, or still open if the acceptance
        # was not seen); a redelivered disbursement keeps the category it was booked in.
        offer_id, known = data.get("offer_id"), self.loans.get(loan_id)
        # Booked from a delinquency notice that came first (see `_delinquent`): now its terms are known.
        noticed = known is not None and len(known) > L_HELD and known[L_HELD] < 0
        category: str
        if known is not None and len(known) > L_CAT and not noticed:
            category = str(known[L_CAT])
        elif self.accepted and self.accepted[0] == offer_id:
            category = str(self.accepted[1])
        elif self.offer and self.offer[0] == offer_id:
            category = self._offer_category(self.offer)
        else:
            category = self.category
        if self.accepted and self.accepted[0] == offer_id:
            self.accepted = []
        if known is None:
            self.loans[loan_id] = [ts, owed, owed, due, 0, category, principal]
        elif noticed:
            # It stays past due and owes no more than the notice said remained. It holds its whole principal's
            # exposure: nothing was released for it while the state did not know what its offer reserved.
            remaining = min(owed, int(known[L_REMAINING]))
            self.loans[loan_id] = [ts, owed, remaining, due, known[L_DPD], category, principal]
        # else: the same disbursement re-sent under a new event id. It applies once per loan: the repayments and
        # days past due seen since stand (resetting them would lift the delinquency freeze).
        for order_id in order_ids:
            rec = self.receivables.get(order_id)
            if rec is not None:
                rec[R_FLAGS] |= F_FINANCED
        if not order_ids and known is None:
            self._financed_unnamed(offer_id, ts)
        if self.offer and self.offer[0] == data.get("offer_id"):
            self.offer = []
        self._bound_loans()

    def _financed_unnamed(self, offer_id: Any, ts: int) -> None:
        """A loan.disbursed of an offer this state made (still open, or its last offer record) that does not name
        its orders (order_ids is optional): which of the open receivables the offer advanced against is unknown
        here, so every one placed by the time the offer was made is taken as financed. The limit still counts
        them; no later offer names them, so none is financed twice (orders placed since back the next offer)."""
        rec = self.offer if self.offer and self.offer[0] == offer_id else self.last[_LAST_OFFER_AT:]
        if len(rec) < 3 or rec[0] != offer_id:
            return
        made = min(ts, int(rec[2]))
        for r in self.receivables.values():
            if r[R_PLACED] and r[R_PLACED] <= made and not r[R_FLAGS] & F_TERMINAL:
                r[R_FLAGS] |= F_FINANCED

    def _bound_loans(self) -> None:
        if len(self.loans) > MAX_LOANS:
            # Forget the advance that matters least: never a past-due one (it freezes the limit), else the one
            # with the least left to pay (the oldest first), so outstanding is understated the least. (The policy
            # makes no offer while MAX_LOANS are open, so its own offers never get here: OPEN_ADVANCES_CAP.)
            loans = self.loans
            del loans[min(loans, key=lambda k: (loans[k][L_DPD] > 0, loans[k][L_REMAINING], loans[k][L_TS]))]

    def _repayment(self, data: dict[str, Any], ts: int) -> None:
        """Once per (loan_id, settlement_id): disbursement reports what remains owed after each settlement's
        payment, and only ever less, so the loan keeps the least remaining it was told and a re-send (same
        settlement, same remaining), early or late, changes nothing."""
        self._money(data["amount"])  # read, so a malformed event is refused before anything counts it
        loan, remaining = self.loans.get(_id(data["loan_id"])), self._money(data["remaining"])
        if loan is not None:
            loan[L_REMAINING] = min(loan[L_REMAINING], remaining)
            if len(loan) > L_HELD:
                loan[L_HELD] = min(loan[L_HELD], remaining)

    def _repaid(self, data: dict[str, Any], ts: int) -> None:
        repaid_at = int(parse_rfc3339(data["repaid_at"]).timestamp()) if data.get("repaid_at") else ts
        loan_id = _id(data["loan_id"])
        if self._loan_closed(loan_id):
            return  # repaid (or charged off) already: one loan counts once
        loan = self.loans.pop(loan_id, None)
        if loan is None:  # never seen disbursed here: no due date to be on time by (see KIND_REPAID_UNSEEN)
            self._history([min(ts, repaid_at), 0, KIND_REPAID_UNSEEN, short_hash(loan_id)])
            return
        self._history([ts, 1 if repaid_at <= loan[L_DUE] else 0, KIND_REPAID, short_hash(loan_id)])

    def _delinquent(self, data: dict[str, Any], ts: int) -> None:
        """A loan past due freezes the limit until it is repaid or charged off. One this state never saw disbursed
        (its loan.disbursed refused or not applied yet) and not closed is booked from the notice, owing what it
        says remains, due `days_past_due` before it, holding no exposure (nothing known was reserved for it here):
        L_HELD -1 marks such a row (it releases nothing; `_disbursed` completes it if its disbursement comes)."""
        dpd, remaining = int(data["days_past_due"]), self._money(data["remaining"])
        loan_id = _id(data["loan_id"])
        loan = self.loans.get(loan_id)
        if loan is None and dpd > 0 and not self._loan_closed(loan_id):
            self.loans[loan_id] = [ts, remaining, remaining, ts - min(dpd, 36_500) * DAY - 1, dpd, self.category, -1]
            self._bound_loans()
        elif loan is not None:
            loan[L_DPD] = max(loan[L_DPD], dpd)
            loan[L_REMAINING] = min(loan[L_REMAINING], remaining)
        if dpd > self.worst_dpd:
            self.worst_dpd, self.worst_dpd_ts = dpd, ts

    def _charged_off(self, data: dict[str, Any], ts: int) -> None:
        loan_id = _id(data["loan_id"])
        self._money(data["amount"])  # read, so a malformed event is refused before anything counts it
        if self._loan_closed(loan_id):
            return
        self.loans.pop(loan_id, None)
        self._history([ts, 0, KIND_CHARGED_OFF, short_hash(loan_id)])

    def _loan_cancelled(self, data: dict[str, Any], ts: int) -> None:
        """The loan of an accepted offer was cancelled before its payout (the rail refused it for good): nothing
        was lent, so outstanding and the loan history are untouched. The acceptance is forgotten (what it
        reserved is released by the caller, from `release_of`, read before this applies); one that arrives
        before its loan_offer.accepted closes the still-open offer, so that acceptance, when it comes, holds
        nothing. A re-send finds neither and changes nothing."""
        offer_id = _id(data["offer_id"])
        _id(data["loan_id"])
        if self.accepted and self.accepted[0] == offer_id:
            self.accepted = []
        if self.offer and self.offer[0] == offer_id:
            self.offer = []
        # The last offer record (policy.accepted_pending) must not hold the cancelled amount back as spoken for.
        if len(self.last) > _LAST_OFFER_AT and self.last[_LAST_OFFER_AT] == offer_id:
            self.last = list(self.last[:_LAST_OFFER_AT])

    def _loan_closed(self, loan_id: str) -> bool:
        return self._closed_row(loan_id) is not None

    def _closed_row(self, loan_id: str) -> list[int] | None:
        h = short_hash(loan_id)
        return next((row for row in self.loan_history if len(row) > 3 and row[3] == h), None)

    def _history(self, row: list[int]) -> None:
        """Add a closed loan; over MAX_LOAN_HISTORY rows, forget the one that says least: a repayment of a loan
        never seen disbursed (it counts nothing) before a repayment, the oldest first, and a charge-off only when
        every row is one. A charge-off blocks the merchant for good (policy: CHARGED_OFF): two dozen repayments
        after it, of other open advances or naming loans this merchant never had, must not push it out."""
        history = self.loan_history
        bisect.insort(history, row)
        if len(history) > MAX_LOAN_HISTORY:
            del history[min(range(len(history)), key=lambda i: (_FORGET_FIRST.get(history[i][2], 2), i))]

    # ----- portfolio exposure -----------------------------------------------------------------------------

    def release_of(self, event: dict[str, Any]) -> tuple[str, int] | None:
        """(category, amount) of the portfolio exposure a loans.v1 event releases, read BEFORE applying it, in
        the category the loan's exposure was reserved in. What a loan releases in all is what its offer reserved,
        its principal (`L_HELD`): a repayment releases what its new remaining brings the held exposure down by
        (nothing for the fee part while the remaining is above the principal, nothing for a re-send); a
        charge-off, or the loan.repaid that closes it, releases what is still held. None when it releases
        nothing: another type, a loan closed already (a re-send, or a recovery after a charge-off: the close
        released it all), a loan the state does not know (nothing known was reserved for it: releasing the
        event's amount could release a fee or a re-send), or data the apply will refuse anyway.
        Loans saved before `L_HELD` existed (no principal known) release, as before, a repayment's or charge-off's
        amount, at most what remains owed."""
        etype = event.get("type")
        if etype == "loan.cancelled":
            return self._cancel_release(event.get("data"))
        if etype not in ("loan.repayment_applied", "loan.charged_off", "loan.repaid"):
            return None
        data: Any = event.get("data")
        try:
            loan_id = _id(data["loan_id"])
            amount = data["amount"]["amount"] if etype != "loan.repaid" else 0
            remaining = data["remaining"]["amount"] if etype == "loan.repayment_applied" else 0
        except (KeyError, TypeError, ValueError):
            return None
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT \
                or type(remaining) is not int or not 0 <= remaining <= MAX_AMOUNT:
            return None
        loan = self.loans.get(loan_id)
        if loan is None:
            return None  # unknown, or closed already (a closed loan leaves `loans`)
        category = str(loan[L_CAT]) if len(loan) > L_CAT else self.category
        if len(loan) > L_HELD:
            held = int(loan[L_HELD])
            release = held - min(held, remaining) if etype == "loan.repayment_applied" else held
        elif etype == "loan.repaid":
            release = 0
        else:
            release = min(amount, int(loan[L_REMAINING]))
            if etype == "loan.repayment_applied":
                release = min(release, int(loan[L_REMAINING]) - min(int(loan[L_REMAINING]), remaining))
        return (category, release) if release > 0 else None

    def _cancel_release(self, data: Any) -> tuple[str, int] | None:
        """What a loan.cancelled releases: exactly what its offer reserved, in the category it reserved it in,
        while the state still holds that reservation (accepted, or still open when the acceptance was not seen);
        nothing for a re-send, or for an offer the state never held (or whose amount it does not know)."""
        try:
            offer_id = _id(data["offer_id"])
        except (KeyError, TypeError, ValueError):
            return None
        if self.accepted and self.accepted[0] == offer_id:
            if len(self.accepted) > 2:
                amount = int(self.accepted[2])
            else:  # saved before the amount was kept: the last offer record still names it
                rec = self.last[_LAST_OFFER_AT:]
                amount = int(rec[1]) if len(rec) > 1 and rec[0] == offer_id else 0
            category = str(self.accepted[1])
        elif self.offer and self.offer[0] == offer_id:
            amount, category = int(self.offer[1]), self._offer_category(self.offer)
        else:
            return None
        return (category, amount) if amount > 0 else None

    # ----- views used by features and policy --------------------------------------------------------------

    def outstanding(self, as_of: int) -> int:
        return sum(loan[L_REMAINING] for loan in self.loans.values() if loan[L_TS] <= as_of)

    def delinquent(self) -> bool:
        return any(loan[L_DPD] > 0 for loan in self.loans.values())

    def charged_off(self) -> bool:
        return any(row[2] == KIND_CHARGED_OFF for row in self.loan_history)


_HANDLERS: dict[str, Any] = {
    "merchant.onboarded": MerchantState._onboarded,
    "merchant.updated": MerchantState._updated,
    "order.placed": MerchantState._placed,
    "order.paid": MerchantState._paid,
    "order.shipped": MerchantState._shipped,
    "order.delivered": MerchantState._delivered,
    "order.cancelled": MerchantState._cancelled,
    "order.refunded": MerchantState._refunded,
    "order.chargeback": MerchantState._chargeback,
    "settlement.paid": MerchantState._settled,
    "loan_offer.accepted": MerchantState._offer_accepted,
    "loan.disbursed": MerchantState._disbursed,
    "loan.repayment_applied": MerchantState._repayment,
    "loan.repaid": MerchantState._repaid,
    "loan.delinquent": MerchantState._delinquent,
    "loan.charged_off": MerchantState._charged_off,
    "loan.cancelled": MerchantState._loan_cancelled,
}
