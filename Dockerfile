# One image with all three Heartbeat binaries (hb-agent, hb-bridge, hb-collector).
FROM rust:1.88-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && cp target/release/hb-agent target/release/hb-bridge target/release/hb-collector /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home hb \
 && mkdir -p /home/hb/state /home/hb/logs && chown hb:hb /home/hb/state /home/hb/logs
COPY --from=build /usr/local/bin/hb-agent /usr/local/bin/hb-bridge /usr/local/bin/hb-collector /usr/local/bin/
USER hb
WORKDIR /home/hb
