"""A minimal merchant-side webhook receiver (standard library only).

    FLOATBRIDGE_WEBHOOK_SECRET=whsec_... python example_receiver.py 8000

Answers 204 for a verified delivery (and, without acting again, for one received before), 400 otherwise.
Floatbridge retries anything that is not 2xx.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

try:
    from verify import WebhookDuplicate, WebhookVerificationError, verify
except ImportError:  # running from the installed package
    from services.disbursement.verifier.verify import WebhookDuplicate, WebhookVerificationError, verify

SECRET = os.environ.get("FLOATBRIDGE_WEBHOOK_SECRET", "")
SEEN: set[str] = set()  # use a shared store (database, Redis) when running several receivers


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            event = verify(SECRET, dict(self.headers.items()), body, seen_ids=SEEN)
        except WebhookDuplicate:  # received before: acknowledged, not acted on twice (a 4xx would be retried)
            self.send_response(204)
            self.end_headers()
            return
        except WebhookVerificationError as exc:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(exc).encode())
            return
        print(f"{event['type']} {event['id']}: {event['data']}", flush=True)
        self.send_response(204)
        self.end_headers()


def main() -> None:
    if not SECRET:
        sys.exit("set FLOATBRIDGE_WEBHOOK_SECRET to the whsec_... secret of your endpoint")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    HTTPServer(("0.0.0.0", port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
