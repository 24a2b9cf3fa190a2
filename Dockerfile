# referral-relay: one container, one volume.
#
#   docker build -t referral-relay .
#   docker run -p 8080:8080 -v relay-data:/data referral-relay
#
# Configure with environment variables (RELAY__SECTION__KEY), secret files (RELAY__..._FILE),
# or a TOML file mounted over /etc/referral-relay/config.toml. See README "Running in a container".

# --- build ---------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# aws-lc-rs builds its C library with cmake, gcc and perl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake gcc g++ make perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/ingest.rs && echo 'fn main() {}' > benches/export.rs \
 && cargo build --release --locked \
 && rm -rf src benches
COPY config config
COPY src src
COPY benches benches
# Make cargo see the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin referral-relay \
 && cp target/release/referral-relay /usr/local/bin/referral-relay

# --- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates for HTTPS to Ocean; nothing else (the healthcheck is the binary itself).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin relay \
 && mkdir -p /data /etc/referral-relay \
 && chown relay:relay /data
COPY --from=build /usr/local/bin/referral-relay /usr/local/bin/referral-relay
COPY config/container.toml /etc/referral-relay/config.toml

ENV RELAY_CONFIG=/etc/referral-relay/config.toml
USER relay
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["referral-relay", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["referral-relay"]
CMD ["serve"]
