"""A small per-client failed-authentication limiter for the HTTP APIs: after `limit` failed attempts
within `window` seconds a client IP is refused (429 + Retry-After) until the window has passed.
Stops online brute-forcing of API keys; successful calls are never counted."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class FailedAuthLimiter:
    def __init__(self, limit: int = 20, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        self.limit, self.window, self.clock, self.max_clients = limit, window, clock, max_clients
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds the client must wait (0 = may try)."""
        with self._lock:
            q = self._trim(client)
            if q is None or len(q) < self.limit:
                return 0
            return max(1, int(q[0] + self.window - self.clock()) + 1)

    def failed(self, client: str) -> None:
        with self._lock:
            if client not in self._fails and len(self._fails) >= self.max_clients:
                self._fails.clear()  # bounded memory under a spoofed-address flood; fail open, briefly
            self._fails.setdefault(client, deque()).append(self.clock())
            q = self._fails[client]
            while len(q) > self.limit:
                q.popleft()

    def _trim(self, client: str) -> deque[float] | None:
        q = self._fails.get(client)
        if q is None:
            return None
        cutoff = self.clock() - self.window
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self._fails[client]
            return None
        return q
