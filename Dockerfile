# syntax=docker/dockerfile:1
# chatd image: Debian 12, two stages.
#   docker build -t chatd .
#   docker run --rm -p 8080:8080 -e CHAT_JWT_SECRET=... -e CHAT_REDIS_URL=redis://redis:6379 chatd
# deploy/docker-compose.yml builds it (build: ..) and runs two nodes behind nginx.

# ---- build: compilers and the -dev packages; the install tree goes to /out
FROM debian:12-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libwebsockets-dev libuv1-dev libluajit-5.1-dev libhiredis-dev libpq-dev \
      libjwt-dev libjansson-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY core/ core/
COPY tests/unit/ tests/unit/
COPY loadtest/ loadtest/
COPY scripts/ scripts/
COPY web/ web/
COPY deploy/systemd/ deploy/systemd/
COPY docs/ docs/
COPY README.md ./
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
 && cmake --build /build -j"$(nproc)" --target chatd \
 && DESTDIR=/out cmake --install /build \
 && strip --strip-debug /out/usr/bin/chatd

# ---- runtime: only the shared libraries chatd links, curl for the health check
FROM debian:12-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libwebsockets17 libuv1 libluajit-5.1-2 libhiredis0.14 libpq5 libjwt0 libjansson4 \
      libssl3 lua-cjson libwebsockets-evlib-uv ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chatd \
 && useradd --system --uid 10001 --gid chatd --home-dir /nonexistent --shell /usr/sbin/nologin chatd
COPY --from=build /out/usr/bin/chatd /usr/bin/chatd
COPY --from=build /out/etc/chatd/scripts/ /etc/chatd/scripts/
COPY --from=build /out/usr/share/chatd/web/ /usr/share/chatd/web/
COPY --from=build /out/usr/share/doc/chatd/ /usr/share/doc/chatd/
ENV CHAT_LISTEN=0.0.0.0:8080 \
    CHAT_SCRIPTS=/etc/chatd/scripts \
    CHAT_WEB_DIR=/usr/share/chatd/web
USER chatd:chatd
EXPOSE 8080
# readiness, not liveness: 200 once Redis (and Postgres, when configured) answer
# and the node is not draining; the orchestrator stops routing to it otherwise
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:8080/readyz || exit 1
# SIGTERM = drain: close clients with 1001 + server_restart, flush history, exit 0
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/chatd"]
