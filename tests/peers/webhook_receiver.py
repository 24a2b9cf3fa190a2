#!/usr/bin/env python3
"""A destination's receiver for the tests, on loopback: every request is verified with the
Standard Webhooks reference library (`standardwebhooks` from PyPI), not with the relay's own
code, and deduplicated by `webhook-id` as the specification asks of receivers.

    webhook_receiver.py SECRET [SECRET ...]

Prints its port on the first line of stdout. Verified requests are answered 200, unless a rule
set through `POST /control` says otherwise:

    {"referral": "REF", "status": 500, "times": 2}   # answer 500 the next 2 times for REF
    {"delay_ms": 300}                                 # answer every request after 300 ms

`GET /received` answers what was received: each verified message once, in arrival order
(`id`, `referral`, `version`, `body`, `at`: seconds on the receiver's monotonic clock), and counts:
`started` (requests begun, before any delay), `attempts` (requests read through), `duplicates`
and `bad_signatures` (requests whose signature failed).
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

verifiers = [Webhook(secret) for secret in sys.argv[1:]]
lock = threading.Lock()
received = []
seen = set()
counts = {"started": 0, "attempts": 0, "duplicates": 0, "bad_signatures": 0}
rules = {}
delay = {"ms": 0}


def verify(body, headers):
    for verifier in verifiers:
        try:
            verifier.verify(body, headers, json_parse=False)
            return True
        except WebhookVerificationError:
            continue
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            snapshot = {"received": list(received), **counts}
        self.answer(200, snapshot)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/control":
            rule = json.loads(body)
            with lock:
                if "delay_ms" in rule:
                    delay["ms"] = rule["delay_ms"]
                else:
                    rules[rule["referral"]] = [rule["status"], rule["times"]]
            self.answer(200, {})
            return
        with lock:
            counts["started"] += 1
        if delay["ms"]:
            time.sleep(delay["ms"] / 1000)
        headers = {k: v for k, v in self.headers.items()}
        with lock:
            counts["attempts"] += 1
        if not verify(body, headers):
            with lock:
                counts["bad_signatures"] += 1
            self.answer(401, {"error": "signature"})
            return
        content_type = self.headers.get("content-type", "")
        payload = json.loads(body)
        if content_type.startswith("application/fhir+json"):
            referral, version = None, None
        else:
            # An alert's data names no referral.
            referral = payload["data"].get("referral")
            version = payload["data"].get("version")
        with lock:
            rule = rules.get(referral)
            if rule and rule[1] > 0:
                rule[1] -= 1
                status = rule[0]
            else:
                status = 200
                msg_id = headers.get("webhook-id") or headers.get("Webhook-Id")
                if msg_id in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(msg_id)
                    received.append(
                        {"id": msg_id, "referral": referral, "version": version, "body": payload,
                         "at": time.monotonic()}
                    )
        if status == 200:
            self.answer(200, {})
        else:
            self.answer(status, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "processing", "diagnostics": f"told to answer {status}"}]})

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A sender killed mid-request (the kill -9 test) breaks the pipe: nothing to report.
        pass


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
