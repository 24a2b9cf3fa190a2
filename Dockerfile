# referral-relay: one container, one volume.
#
#   docker build -t referral-relay .
#   docker run -p 8080:8080 -v relay-data:/data referral-relay
#
# Configure with environment variables (RELAY__SECTION__KEY), secret files (RELAY__..._FILE),
# or a TOML file mounted over /etc/referral-relay/config.toml. See README "Running in a container".
# tests/container/run.sh builds this file as it is and runs the image the way ops do.

# --- build ---------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a change to src/ does not rebuild them: the manifests and the lock file,
# every workspace member whole (crates/fhir-check is the slowest crate to compile and changes
# rarely), and placeholders for this package's own targets. The build stage needs nothing beyond
# the image's gcc: aws-lc-sys compiles its C with the cc crate, no cmake or perl.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/ingest.rs && echo 'fn main() {}' > benches/export.rs \
 && cargo build --release --locked --bin referral-relay \
 && rm src/main.rs src/lib.rs
# Everything else the build reads: src, config (embedded with include_str!), migrations (read
# at compile time by the PostgreSQL store), benches (named in Cargo.toml). .dockerignore keeps
# the rest out. One COPY, one layer.
COPY . .
# Newer than the placeholder build, so cargo rebuilds this package (COPY keeps the files' times).
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin referral-relay \
 && cp target/release/referral-relay /usr/local/bin/referral-relay

# --- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# Nothing is installed: the binary needs only glibc, and the CA certificates for HTTPS to Ocean
# come from the build stage's Debian ca-certificates bundle (where rustls looks for them).
# uid 10001 (group relay, 10001) owns only /data; a read-only root filesystem works (the relay
# writes nowhere else). /data is also writable by group 0, for platforms that run images under
# an arbitrary uid in group 0 (OpenShift). No setuid or setgid programs are left.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin relay \
 && mkdir /data && chown 10001:0 /data && chmod 0770 /data \
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/local/bin/referral-relay /usr/local/bin/referral-relay
COPY config/container.toml /etc/referral-relay/config.toml

ENV RELAY_CONFIG=/etc/referral-relay/config.toml
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# Exec form: no shell involved. The binary asks its own /healthz (`healthcheck --ready` asks
# /readyz, for a load balancer's or Kubernetes' readiness probe).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["referral-relay", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["referral-relay"]
CMD ["serve"]
