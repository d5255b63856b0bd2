# syntax=docker/dockerfile:1
#
# refit container image: a Rust builder stage and a slim Debian runtime.
#
#   docker build -t refit:0.1.0 .
#   docker run --rm refit:0.1.0 config --env-names
#
# The development and CI machines have no Docker engine, so this image is never built there;
# tests/k8s/test_dockerfile.py parses it, lints it with hadolint and checks that it runs the same
# build steps as the Makefile (scripts/install-deps.sh, then `cargo build --release --locked`).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# scripts/install-deps.sh puts libxgboost (from the xgboost-cpu wheel) under $REFIT_DEPS_DIR and links
# .deps to it; a fixed path keeps the binary's rpath identical in the runtime stage.
ENV REFIT_DEPS_DIR=/opt/refit \
    CARGO_TERM_COLOR=never \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# install-deps.sh needs pip (to fetch the wheel) and venv (it also prepares the test oracle venv);
# the rest of the Debian build dependencies it installs itself. Debian package versions are not
# pinned (DL3008): a stable release only moves for security fixes, which the image should take.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*

# Layer 1: native dependencies, rebuilt only when the install script changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*

# Layer 2: the crate graph, rebuilt only when the manifest, lock file or build script change.
# A stub crate stands in for the sources so that every dependency is compiled and cached here.
# The test kit (a workspace member, used only by tests and benches) is a stub for good.
COPY Cargo.toml Cargo.lock build.rs ./
COPY tests/kit/Cargo.toml tests/kit/Cargo.toml
COPY .cargo .cargo
RUN mkdir -p src tests/kit/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/kit/src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# Layer 3: refit itself. Touch the sources so cargo never mistakes them for the stub's.
# docs/openapi.json is served at /openapi.json (include_str! in src/http.rs).
COPY docs/openapi.json docs/openapi.json
COPY src src
COPY migrations migrations
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/refit /out/refit

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# libstdc++ for libxgboost, libssl for librdkafka's TLS, CA roots for TLS to PostgreSQL/Redis/Kafka/Loki.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 refit \
 && useradd --system --uid 10001 --gid refit --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin refit

# libxgboost.so finds its hash-named libgomp through RPATH $ORIGIN/../../xgboost_cpu.libs, so the
# wheel's layout is copied whole, to the same path the binary's rpath names.
COPY --from=builder /opt/refit/xgboost-3.4.1 /opt/refit/xgboost-3.4.1
COPY --from=builder /out/refit /usr/local/bin/refit

# Belt and braces besides the rpath. MALLOC_ARENA_MAX: XGBoost allocates on the training threads,
# and glibc's default of up to 8 arenas per core holds on to freed memory (RSS 119 vs 94 MB with
# 10,000 users in `make bench`).
ENV LD_LIBRARY_PATH=/opt/refit/xgboost-3.4.1/xgboost/lib:/opt/refit/xgboost-3.4.1/xgboost_cpu.libs \
    MALLOC_ARENA_MAX=2 \
    REFIT_HTTP_ADDR=0.0.0.0:8080 \
    REFIT_LOG_FORMAT=json

# Fail the build, not the first pod, if a shared library is missing.
RUN ldd /usr/local/bin/refit >/tmp/ldd.txt \
 && ! grep 'not found' /tmp/ldd.txt \
 && rm /tmp/ldd.txt \
 && /usr/local/bin/refit config --env-names >/dev/null

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/refit"]
CMD ["run"]
