# syntax=docker/dockerfile:1
#
# The credvend image: one binary for the operator (`credvend operator`) and the injected agent
# (`credvend agent`). Build with BuildKit:
#
#   docker build -t credvend:0.1.0 .
#
# The builder and the runtime are both Debian 12 (bookworm), so the glibc the binary is linked
# against is the one it runs with.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: they change far less often than our sources, so an
# edit to src/ recompiles only the credvend crate. Stub targets stand in for the real ones
# (cargo refuses a manifest without its targets); their artefacts are removed before the real
# build, because cargo decides freshness by mtime and the stubs could look newer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin credvend \
    && rm -rf src target/release/credvend* target/release/deps/credvend-* \
        target/release/deps/libcredvend-* target/release/.fingerprint/credvend-*

# build.rs and layout/ decide how the binary is linked (the agent's functions together, packed
# relocations); `install -s` then strips it: symbols would be a third of the file and are never
# mapped, and the release profile keeps them so that the layout can be recorded from this very
# build (scripts/agent-layout.sh).
COPY build.rs ./
COPY layout ./layout
COPY src ./src
RUN cargo build --release --locked --bin credvend \
    && install -s -D -m 0755 target/release/credvend /out/credvend

# distroless/cc: glibc, libgcc and CA certificates (STS is reached over TLS), no shell and no
# package manager. The :nonroot tag's default user is 65532, set explicitly below as well so
# runAsNonRoot admission can verify a numeric UID.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="credvend" \
      org.opencontainers.image.description="Short-lived AWS credentials for Kubernetes pods: AWSRoleBinding operator, mutating webhook and per-pod credential agent" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/credvend /usr/local/bin/credvend
USER 65532:65532
ENTRYPOINT ["credvend"]
