"""The CDS Hooks client's side of the relay's screening tests, on a loopback port: keys and
tokens as CDS Hooks 2.0 §"Trusting CDS Clients" describes them, made with PyJWT and
`cryptography` (not the relay's JWT library), and the answers checked against a JSON Schema of
CDS Hooks 2.0 with `jsonschema`.

It prints its port, then serves:
  GET  /jwks.json   the published public keys (counted: GET /stats)
  POST /token       {"aud", "iss", "alg"?, "kid"?, "exp_in"?, "jti"?, "omit"?: [claims],
                     "header_kid"?: false} -> {"token"}; kid "stranger" is a key never
                     published, alg "HS256" signs with a shared secret, "none" not at all
                    "claims"?: {...}, "headers"?: {...} are merged into the token's as given
  POST /rotate      {"kid", "alg", "retire"?: [kids]}: publish a new key, drop others
  POST /keys_down   {"down": true|false}: /jwks.json answers 500 (still counted) while down
  POST /pem         {"kid"} -> {"pem"}: a key's public half as PEM
  POST /validate    {"what": "discovery" | "response", "document"} -> {"errors": [...]}
"""

import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cds_hooks_2.0.schema.json")
with open(SCHEMA_PATH) as f:
    SCHEMA = json.load(f)
jsonschema.Draft202012Validator.check_schema(SCHEMA)

LOCK = threading.Lock()
KEYS = {}  # kid -> {"alg", "private", "published"}
STATS = {"jwks_fetches": 0}
DOWN = {"down": False}


def make_key(alg):
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def add_key(kid, alg, published=True):
    KEYS[kid] = {"alg": alg, "private": make_key(alg), "published": published}


def public_jwk(kid, key):
    public = key["private"].public_key()
    algorithm = ECAlgorithm if key["alg"].startswith("ES") else RSAAlgorithm
    jwk = json.loads(algorithm.to_jwk(public))
    jwk.update({"kid": kid, "alg": key["alg"], "use": "sig"})
    return jwk


add_key("rsa-1", "RS384")
add_key("ec-1", "ES384")
add_key("stranger", "RS384", published=False)


def validator(what):
    schema = dict(SCHEMA)
    schema["$ref"] = "#/$defs/" + what
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            if self.path == "/jwks.json":
                STATS["jwks_fetches"] += 1
                if DOWN["down"]:
                    return self.answer(500, {})
                keys = [public_jwk(k, v) for k, v in KEYS.items() if v["published"]]
                return self.answer(200, {"keys": keys})
            if self.path == "/stats":
                return self.answer(200, STATS)
        self.answer(404, {})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            if self.path == "/token":
                return self.answer(200, {"token": token(request)})
            if self.path == "/rotate":
                add_key(request["kid"], request["alg"])
                for kid in request.get("retire", []):
                    KEYS.pop(kid, None)
                return self.answer(200, {})
            if self.path == "/keys_down":
                DOWN["down"] = bool(request["down"])
                return self.answer(200, {})
            if self.path == "/pem":
                public = KEYS[request["kid"]]["private"].public_key()
                pem = public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                return self.answer(200, {"pem": pem.decode()})
        if self.path == "/validate":
            errors = [
                "{}: {}".format("/".join(str(p) for p in e.absolute_path), e.message)
                for e in validator(request["what"]).iter_errors(request["document"])
            ]
            return self.answer(200, {"errors": errors})
        self.answer(404, {})


def token(request):
    kid = request.get("kid", "rsa-1")
    key = KEYS[kid]
    alg = request.get("alg", key["alg"])
    now = int(time.time())
    claims = {
        "iss": request["iss"],
        "sub": "ocean-test-client",
        "aud": request["aud"],
        "iat": now,
        "exp": now + int(request.get("exp_in", 300)),
        "jti": request.get("jti") or str(uuid.uuid4()),
    }
    for name in request.get("omit", []):
        claims.pop(name, None)
    claims.update(request.get("claims", {}))
    headers = {"typ": "JWT"}
    if request.get("header_kid", True):
        headers["kid"] = kid
    headers.update(request.get("headers", {}))
    signing_key = key["private"]
    if alg.startswith("HS"):
        signing_key = "a-shared-secret-no-cds-client-may-use-000"
    elif alg == "none":
        signing_key = None
    return jwt.encode(claims, signing_key, algorithm=alg, headers=headers)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
