#!/usr/bin/env python3
"""An SMTP server for the tests, on loopback: `aiosmtpd` from PyPI, a mail server that is not
ours, receiving what the relay's alerts send.

    smtp_server.py DIR [--tls starttls|tls|none] [--cert FILE --key FILE]
                       [--user NAME --password PASSWORD] [--refuse ADDRESS=REPLY ...]

Prints its port on the first line of stdout. With `--tls starttls` it offers STARTTLS and
requires it before anything but EHLO/HELO/NOOP/QUIT (`tls`: TLS from the first byte); with
`--user`, AUTH PLAIN or LOGIN with that user name and password is required before MAIL.
`--refuse ADDRESS=REPLY` answers REPLY (e.g. `451 4.3.0 Try again later`) to RCPT TO:<ADDRESS>.

Every message received is written to DIR as `NNNN.json` before DATA is answered, so a client
that got its 250 finds the file there: `from` and `to` (the envelope), `subject`, `message_id`,
`body` (the text part, transfer encoding and charset decoded, with `\n` line ends), `raw` (the message as received),
`tls` (whether it came over TLS) and `user` (who authenticated, or null).
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import os
import ssl
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

parser = argparse.ArgumentParser()
parser.add_argument("dir")
parser.add_argument("--tls", choices=["starttls", "tls", "none"], default="none")
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--user")
parser.add_argument("--password", default="")
parser.add_argument("--refuse", action="append", default=[])
args = parser.parse_args()

# aiosmtpd warns on stderr of its own deprecated attribute whenever AUTH succeeds.
logging.getLogger("mail.log").setLevel(logging.ERROR)
# ... and of AUTH without its STARTTLS, which is what --tls tls and none ask for.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")

refusals = dict(rule.split("=", 1) for rule in args.refuse)


class Handler:
    def __init__(self):
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in refusals:
            return refusals[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        user = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            user = session.auth_data.login.decode()
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(message.get("subject", "")),
            "message_id": str(message.get("message-id", "")),
            # Lines as the sender wrote them: CRLF is the wire's, not the text's.
            "body": body.get_content().replace("\r\n", "\n") if body is not None else "",
            "raw": raw.decode("utf-8", errors="replace"),
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "user": user,
        }
        self.count += 1
        path = os.path.join(args.dir, f"{self.count:04}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == args.user
        and auth_data.password.decode() == args.password
    )
    # handled=False: aiosmtpd answers 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    return ctx


async def main():
    handler = Handler()
    options = {"hostname": "smtp.test"}
    if args.tls == "starttls":
        options.update(tls_context=context(), require_starttls=True)
    if args.user:
        options.update(
            auth_required=True,
            # After STARTTLS, as a real submission server. aiosmtpd knows only of its own
            # STARTTLS, not of TLS from the first byte (then the socket is TLS anyway); with
            # --tls none AUTH is offered in the clear.
            auth_require_tls=args.tls == "starttls",
            authenticator=authenticator,
        )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **options),
        host="127.0.0.1",
        port=0,
        ssl=context() if args.tls == "tls" else None,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
