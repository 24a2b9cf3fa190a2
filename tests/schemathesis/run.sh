#!/usr/bin/env bash
# Fuzzes the point-of-service API against its own OpenAPI document with schemathesis (from
# PyPI), on the real binary on loopback, so the document stays exact: every status code an
# operation can answer is listed, every request valid by the schema is taken, and every answer
# matches its schema. Bounded in time (SCHEMATHESIS_SECS, default 240 s of fuzzing).
#
#   tests/schemathesis/run.sh            # builds the binary if needed
#
# Needs Python 3.9+ with venv; installs a pinned schemathesis into target/schemathesis-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=4.32.5
venv=target/schemathesis-venv
secs=${SCHEMATHESIS_SECS:-240}

if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build --locked --quiet --bin referral-relay
work=$(mktemp -d)
trap 'kill "$relay" 2>/dev/null || true; wait "$relay" 2>/dev/null || true; rm -rf "$work"' EXIT

key=schemathesis-key-0123456789
cat > "$work/config.toml" <<TOML
[server]
listen = "127.0.0.1:0"
data_dir = "$work/data"

[api.clients.fuzz]
key = "$key"

# Updates go to a site nobody listens on (loopback, discard port): they are accepted, then
# retried in the background.
[sites.main]
base_url = "http://127.0.0.1:9"
client_id = "fuzz"
client_secret = "fuzz"

[integrations.default]
auth = { scheme = "none" }

# A destination nobody listens on either: versions are queued and retried in the background,
# and /destinations has one to list, pause, resume and backfill.
[destinations.emr]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "whsec_c2NoZW1hdGhlc2lzLXNjaGVtYXRoZXNpcy1zY2hlbWEh"
TOML

RUST_LOG=info target/debug/referral-relay serve --config "$work/config.toml" 2>"$work/relay.log" &
relay=$!
addr=""
for _ in $(seq 1 100); do
    addr=$(grep -o 'listening.*addr=[0-9.:]*' "$work/relay.log" | grep -o '[0-9.]*:[0-9]*$' || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then
    cat "$work/relay.log" >&2
    echo "the relay did not start" >&2
    exit 1
fi
base="http://$addr"

# Referrals to find: every good fixture.
for fixture in fhir-fixtures/*.json; do
    curl -sf -o /dev/null -X POST "$base/fhir/default/\$process-message" \
        -H 'content-type: application/fhir+json' --data-binary "@$fixture"
done

"$venv/bin/st" --config-file tests/schemathesis/schemathesis.toml --no-color \
    run "$base/api/v1/openapi.json" \
    -H "Authorization: Bearer $key" \
    --checks all \
    --max-time "$secs" \
    --workers 1 \
    --request-timeout 70 \
    --suppress-health-check all
