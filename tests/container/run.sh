#!/usr/bin/env bash
# The container test: builds the image from the Dockerfile as it is, then runs it the way ops do
# and checks what they rely on, each check failing with a message that says what broke.
#
#   tests/container/run.sh        # as root; .ci/run calls it
#
# Needs buildah, podman, runc and debootstrap (Debian's packages, installed when missing), the
# machine's PostgreSQL (RELAY_TEST_POSTGRES_URL, by default host=127.0.0.1 port=5432
# user=postgres dbname=test; a schema of its own, dropped at the end) and Python 3 with venv
# (podman-compose from PyPI reads deploy/compose.yaml). No Docker engine or registry is needed:
# tests/container/bases.sh makes local stand-ins for the two FROM images when they are missing.
#
# Containers run with the host's network (the sandbox this runs in has no bridge networking) and
# listen on free loopback ports chosen here; runc, not crun (crun refuses this machine's hybrid
# cgroup layout); explicit file and process limits (podman's defaults ask for more than the
# sandbox may raise). Everything else is as ops would run it.
#
# Environment: RELAY_IMAGE (tag to build, default localhost/referral-relay:test),
# RELAY_IMAGE_MAX_ADDED_MB (what the image may add to its base, default 47: 39.6 MB at issue 24,
# 40.1 MB with destinations (issue 25), just over 44 MB with openidconnect for the console's
# OpenID Connect sign-in (issue 29: its pure-Rust RSA and elliptic-curve verifiers, about
# 2.5 MB of code); the guard is for the next heavy crate, which adds several MB).
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${RELAY_IMAGE:-localhost/referral-relay:test}
max_added_mb=${RELAY_IMAGE_MAX_ADDED_MB:-47}
pg_url=${RELAY_TEST_POSTGRES_URL:-host=127.0.0.1 port=5432 user=postgres dbname=test}
fixture=fhir-fixtures/v0.11-add-service-request.json
fixture_ref=TST-0011-AAAA
second_fixture=fhir-fixtures/v0.10-add-service-request.json
api_key=container-test-key-0123456789
password=container-test-password-42
tag="relay-test-$$"
schema="relay_container_$$"
podman=(podman --storage-driver vfs)
run=("${podman[@]}" run --runtime runc --network host --label "$tag"
    --ulimit nofile=8192:8192 --ulimit nproc=4096:4096)

say() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }

# Tools: Debian's container packages, and podman-compose from PyPI in a venv of its own.
missing=()
for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
venv=target/container-venv
compose_version=1.6.0
if [ ! -x "$venv/bin/podman-compose" ] || ! "$venv/bin/podman-compose" --version 2>/dev/null | grep -q "$compose_version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$compose_version"
fi

work=$(mktemp -d)
volume="$tag-data"
current=""
cleanup() {
    status=$?
    "${podman[@]}" ps -aq --filter "label=$tag" | xargs -r "${podman[@]}" rm -f -v -t 0 >/dev/null 2>&1 || true
    "${podman[@]}" volume rm -f "$volume" >/dev/null 2>&1 || true
    psql "$pg_url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# Says what broke, with the logs of the container concerned (JSON lines; never bodies or PHI).
fail() {
    echo "container test FAILED: $*" >&2
    if [ -n "$current" ]; then
        echo "--- logs of $current:" >&2
        "${podman[@]}" logs "$current" 2>&1 | tail -40 >&2 || true
    fi
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for URL SECONDS: until GET URL answers 200.
wait_for() {
    local deadline=$((SECONDS + $2))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# post URL FILE [curl args...]: prints the status code.
post() {
    local url=$1 file=$2
    shift 2
    curl -s -o "$work/answer" -w '%{http_code}' -X POST "$url" \
        -H 'Content-Type: application/fhir+json' --data-binary "@$file" "$@"
}

# get_referral BASE REF: prints the status code of the API's read.
get_referral() {
    curl -s -o "$work/answer" -w '%{http_code}' -H "Authorization: Bearer $api_key" \
        "$1/api/v1/referrals/$2"
}

host_uid() {
    local pid
    pid=$("${podman[@]}" inspect --format '{{.State.Pid}}' "$1")
    awk '/^Uid:/ { print $2 }' "/proc/$pid/status"
}

say "stand-in base images"
tests/container/bases.sh

say "building $image from the Dockerfile"
started=$SECONDS
buildah --storage-driver vfs bud --layers --format docker --isolation chroot \
    -t "$image" . >"$work/build.log" 2>&1 || {
    tail -60 "$work/build.log" >&2
    fail "the image does not build (buildah bud)"
}
ok "built in $((SECONDS - started)) s"

say "the image"
base_image=$(awk 'toupper($1) == "FROM" { base = $2 } END { print base }' Dockerfile)
base_size=$("${podman[@]}" image inspect --format '{{.Size}}' "$base_image")
image_size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
added=$((image_size - base_size))
echo "   base $base_image: $((base_size / 1000000)) MB, image: $((image_size / 1000000)) MB, added: $((added / 1000000)) MB"
[ "$added" -le $((max_added_mb * 1000000)) ] ||
    fail "the image adds $((added / 1000000)) MB to its base (limit $max_added_mb MB)"
ok "adds under $max_added_mb MB"
user=$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")
[ "$user" = "10001:10001" ] || fail "the image runs as '$user', not 10001:10001"
health=$("${podman[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$image")
case "$health" in
    *'"CMD","referral-relay","healthcheck"'*) ok "HEALTHCHECK runs the binary itself, no shell" ;;
    *) fail "the image's HEALTHCHECK is not the binary's own check: $health" ;;
esac

say "serve with no configuration, read-only root, the volume"
port=$(free_port)
base="http://127.0.0.1:$port"
current="$tag-a"
# Only the port is set: with the host's network the image's 0.0.0.0:8080 could be taken.
"${run[@]}" -d --name "$current" --read-only --read-only-tmpfs=false -v "$volume:/data" \
    -e "RELAY__SERVER__LISTEN=127.0.0.1:$port" "$image" >/dev/null 2>"$work/podman.err" ||
    { cat "$work/podman.err" >&2; fail "the container did not start"; }
wait_for "$base/healthz" 60 || fail "/healthz did not answer 200 within 60 s"
ok "/healthz answers"
code=$(post "$base/fhir/default/\$process-message" "$fixture")
[ "$code" = 200 ] || fail "posting $fixture answered $code: $(head -c 400 "$work/answer")"
ok "a delivery is stored (200)"
uid=$(host_uid "$current")
[ "$uid" = 10001 ] || fail "the process runs as uid $uid, not 10001"
ok "the process runs as uid 10001"
# podman itself puts /etc/hosts, /etc/hostname, /etc/resolv.conf and /run/.containerenv in place.
changed=$("${podman[@]}" diff "$current" |
    grep -vxE 'C /etc|[AC] /etc/(hosts|hostname|resolv\.conf)|C /run|A /run/\.containerenv' || true)
[ -z "$changed" ] || fail "the container wrote outside /data: $changed"
ok "nothing written outside /data, with a read-only root filesystem"
"${podman[@]}" exec "$current" referral-relay healthcheck >/dev/null ||
    fail "referral-relay healthcheck inside the running container did not exit 0"
"${podman[@]}" exec "$current" referral-relay healthcheck --ready >/dev/null ||
    fail "referral-relay healthcheck --ready inside the running container did not exit 0"
"${podman[@]}" healthcheck run "$current" >/dev/null ||
    fail "the image's HEALTHCHECK failed on a running service"
ok "healthcheck (and --ready, and the image's HEALTHCHECK) exit 0"
started=$SECONDS
"${podman[@]}" stop -t 60 "$current" >/dev/null 2>&1
took=$((SECONDS - started))
exit_code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$current")
[ "$exit_code" = 0 ] || fail "after SIGTERM the process exited $exit_code, not 0"
[ "$took" -lt 30 ] || fail "SIGTERM took $took s (the drain is bounded by 30 s)"
# Read whole before searching: `grep -q` stops reading at its match, and under pipefail the
# writer's SIGPIPE would fail the check.
logs=$("${podman[@]}" logs "$current" 2>&1)
grep -q 'store flushed and closed' <<<"$logs" ||
    fail "the store did not log its final flush on SIGTERM"
ok "SIGTERM: exit 0 in $took s, store flushed"
current=""
if "${run[@]}" --rm -e "RELAY__SERVER__LISTEN=127.0.0.1:$port" "$image" healthcheck --timeout-secs 2 >/dev/null 2>&1; then
    fail "referral-relay healthcheck exited 0 with the service down"
fi
ok "healthcheck exits non-zero with the service down"

say "a data dir the relay cannot write"
mkdir -p "$work/root-owned"
chmod 0755 "$work/root-owned"
if "${run[@]}" --rm -v "$work/root-owned:/data" -e "RELAY__SERVER__LISTEN=127.0.0.1:$port" \
    "$image" serve >"$work/denied.log" 2>&1; then
    fail "serve started on a data dir it cannot write"
fi
grep -q 'cannot write to the data dir /data (owned by uid 0' "$work/denied.log" ||
    fail "the refusal does not say which directory or who owns it: $(tail -3 "$work/denied.log")"
ok "refused, naming /data and its owner"

say "the same volume in a new container, configured by RELAY__* variables and a _FILE secret"
mkdir -p "$work/secrets"
printf '%s' "$password" >"$work/secrets/ocean-password"
chown -R 10001:10001 "$work/secrets"
chmod 0500 "$work/secrets"
chmod 0400 "$work/secrets/ocean-password"
current="$tag-b"
"${run[@]}" -d --name "$current" --read-only -v "$volume:/data" \
    -v "$work/secrets:/run/secrets:ro" \
    -e "RELAY__SERVER__LISTEN=127.0.0.1:$port" \
    -e "RELAY__API__CLIENTS__OPS__KEY=$api_key" \
    -e RELAY__INTEGRATIONS__OCEAN__AUTH__SCHEME=basic \
    -e RELAY__INTEGRATIONS__OCEAN__AUTH__USERNAME=ocean \
    -e RELAY__INTEGRATIONS__OCEAN__AUTH__PASSWORD_FILE=/run/secrets/ocean-password \
    "$image" >/dev/null 2>"$work/podman.err" || { cat "$work/podman.err" >&2; fail "the container did not start"; }
wait_for "$base/healthz" 60 || fail "/healthz did not answer 200 within 60 s"
code=$(get_referral "$base" "$fixture_ref")
[ "$code" = 200 ] && grep -q "\"$fixture_ref\"" "$work/answer" ||
    fail "the referral stored by the first container is not there: GET answered $code"
ok "the referral stored before the restart is read through the API"
code=$(post "$base/fhir/ocean/\$process-message" "$second_fixture" -u "ocean:$password")
[ "$code" = 200 ] || fail "basic with the password from the _FILE secret answered $code"
code=$(post "$base/fhir/ocean/\$process-message" "$second_fixture" -u "ocean:wrong-$password")
[ "$code" = 401 ] || fail "basic with a wrong password answered $code, not 401"
ok "basic integration from variables and a read-only secret file: right password 200, wrong 401"
"${podman[@]}" stop -t 60 "$current" >/dev/null 2>&1
current=""

say "HTTPS on: the relay serves TLS itself, and takes a renewed certificate on SIGHUP"
# A CA and two certificates for relay.test, made here with openssl; curl trusts only that CA.
tls="$work/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Relay Test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
for serial in 1001 1002; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=relay.test" \
        -keyout "$tls/$serial.key" -out "$tls/$serial.csr" 2>/dev/null
    printf 'subjectAltName=DNS:relay.test\nextendedKeyUsage=serverAuth\n' >"$tls/ext"
    openssl x509 -req -in "$tls/$serial.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -days 2 \
        -set_serial "$serial" -extfile "$tls/ext" -out "$tls/$serial.crt" 2>/dev/null
done
mkdir -p "$tls/served"
cp "$tls/1001.crt" "$tls/served/tls.crt"
cp "$tls/1001.key" "$tls/served/tls.key"
chown -R 10001:10001 "$tls/served"
chmod 0400 "$tls/served/tls.key"
https="https://relay.test:$port"
curl_tls=(curl -s --cacert "$tls/ca.crt" --resolve "relay.test:$port:127.0.0.1")
served_serial() {
    openssl s_client -connect "127.0.0.1:$port" -servername relay.test </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null
}
current="$tag-tls"
"${run[@]}" -d --name "$current" --read-only -v "$tls/served:/run/tls:ro" \
    -e "RELAY__SERVER__LISTEN=127.0.0.1:$port" \
    -e RELAY__SERVER__TLS__CERT_FILE=/run/tls/tls.crt \
    -e RELAY__SERVER__TLS__KEY_FILE=/run/tls/tls.key \
    -e RELAY__SERVER__TLS__RELOAD_SECS=3600 \
    "$image" >/dev/null 2>"$work/podman.err" || { cat "$work/podman.err" >&2; fail "the container did not start"; }
deadline=$((SECONDS + 60))
until [ "$("${curl_tls[@]}" -o /dev/null -w '%{http_code}' "$https/healthz")" = 200 ]; do
    [ $SECONDS -lt "$deadline" ] || fail "/healthz over HTTPS did not answer 200 within 60 s"
    sleep 0.2
done
ok "/healthz over HTTPS, to a client that trusts only the test CA"
code=$("${curl_tls[@]}" -o "$work/answer" -w '%{http_code}' -X POST "$https/fhir/default/\$process-message" \
    -H 'Content-Type: application/fhir+json' --data-binary "@$fixture")
[ "$code" = 200 ] || fail "a delivery over HTTPS answered $code"
ok "a delivery over HTTPS is stored (200)"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")" != 200 ] ||
    fail "plain HTTP was answered on the HTTPS listener"
"${podman[@]}" healthcheck run "$current" >/dev/null 2>&1 ||
    fail "the image's HEALTHCHECK failed with HTTPS on"
ok "plain HTTP not served; the image's HEALTHCHECK passes over HTTPS"
[ "$(served_serial)" = "serial=03E9" ] || fail "the first certificate (serial 1001) is not served: $(served_serial)"
cp "$tls/1002.crt" "$tls/served/tls.crt"
cp "$tls/1002.key" "$tls/served/tls.key"
chown 10001:10001 "$tls/served"/*
"${podman[@]}" kill --signal HUP "$current" >/dev/null
deadline=$((SECONDS + 20))
until [ "$(served_serial)" = "serial=03EA" ]; do
    [ $SECONDS -lt "$deadline" ] || fail "after SIGHUP the renewed certificate (serial 1002) is not served: $(served_serial)"
    sleep 0.2
done
logs=$("${podman[@]}" logs "$current" 2>&1)
grep -q 'TLS certificate reloaded' <<<"$logs" ||
    fail "the reload was not logged"
ok "SIGHUP: the renewed certificate is served, without a restart"
"${podman[@]}" stop -t 60 "$current" >/dev/null 2>&1
exit_code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$current")
[ "$exit_code" = 0 ] || fail "after SIGTERM the process exited $exit_code, not 0"
current=""

say "commands ops run in a stopped container on the volume"
mkdir -p "$work/out"
chown 10001:10001 "$work/out"
"${run[@]}" --rm -v "$volume:/data" "$image" audit verify >"$work/verify" 2>"$work/verify.log" ||
    { cat "$work/verify" "$work/verify.log" >&2; fail "audit verify on the volume failed"; }
grep -q 'audit log intact' "$work/verify" || fail "audit verify did not say the chain is intact: $(cat "$work/verify")"
ok "audit verify: $(cat "$work/verify")"
"${run[@]}" --rm -v "$volume:/data" -v "$work/out:/out" "$image" export --out /out/referrals.csv \
    >"$work/export.log" 2>&1 || { cat "$work/export.log" >&2; fail "export --out on the volume failed"; }
grep -q "$fixture_ref" "$work/out/referrals.csv" || fail "the export does not hold $fixture_ref"
[ "$(wc -l <"$work/out/referrals.csv")" -ge 3 ] || fail "the export does not hold both referrals"
ok "export --out wrote both referrals"

say "deploy/compose.yaml: parsed, and its relay services run from the image on PostgreSQL"
mkdir -p "$work/deploy/secrets"
cp deploy/compose.yaml "$work/deploy/"
# The secrets compose.yaml names, made for the test (the README says how to make real ones).
printf '%s' "$pg_url" >"$work/deploy/secrets/relay-database-url"
printf '%s' "$password" >"$work/deploy/secrets/ocean-password"
printf '%s' "$api_key" >"$work/deploy/secrets/emr-api-key"
python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$work/deploy/secrets/relay-storage-key"
printf '%s' "postgres-password" >"$work/deploy/secrets/postgres-password"
chmod 0644 "$work"/deploy/secrets/*
(cd "$work/deploy" && PATH="$PWD/$venv/bin:$PATH" "$OLDPWD/$venv/bin/podman-compose" -f compose.yaml config) \
    >"$work/compose.resolved.yaml" 2>"$work/compose.err" ||
    { cat "$work/compose.err" >&2; fail "podman-compose config refused deploy/compose.yaml"; }
ok "podman-compose config parses it"
# One line per relay service: name, then its podman arguments (environment, secrets, read-only,
# stop grace period) and its health check command, as compose would give them.
"$venv/bin/python" tests/container/compose_services.py "$work/compose.resolved.yaml" "$work/deploy" \
    >"$work/services" || fail "deploy/compose.yaml does not describe the relay as expected"
replicas=$(wc -l <"$work/services")
[ "$replicas" -ge 2 ] || fail "deploy/compose.yaml runs $replicas relay replicas, not two"
ports=()
while IFS=$'\t' read -r name args health; do
    p=$(free_port)
    ports+=("$p")
    current="$tag-$name"
    eval "set -- $args"
    "${run[@]}" -d --name "$current" "$@" \
        -e "RELAY__SERVER__LISTEN=127.0.0.1:$p" -e "RELAY__STORAGE__SCHEMA=$schema" \
        "$image" serve >/dev/null 2>"$work/podman.err" ||
        { cat "$work/podman.err" >&2; fail "compose service $name did not start"; }
    wait_for "http://127.0.0.1:$p/readyz" 90 || fail "compose service $name: /readyz not 200 within 90 s"
    eval "set -- $health"
    "${podman[@]}" exec "$current" "$@" >/dev/null ||
        fail "compose service $name: its health check ($health) failed on a ready service"
    ok "$name ready on PostgreSQL, its health check passes"
done <"$work/services"
current=""
code=$(post "http://127.0.0.1:${ports[0]}/fhir/ocean/\$process-message" "$fixture" -u "ocean:$password")
[ "$code" = 200 ] || fail "posting to the first replica answered $code"
code=$(get_referral "http://127.0.0.1:${ports[1]}" "$fixture_ref")
[ "$code" = 200 ] && grep -q "\"$fixture_ref\"" "$work/answer" ||
    fail "the delivery posted to one replica is not read back from the other: GET answered $code"
ok "a delivery posted to one replica is read back from the other"

say "all checks passed"
