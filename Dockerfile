# The wallet's one image: coordinator, participant, projector and walletctl,
# with what the compose file runs beside them (PostgreSQL, etcd, Prometheus),
# started by docker/entrypoint.sh (`entrypoint.sh postgres|etcd|init|prometheus`,
# or any binary by name).
#
# For the world, the default: a multi-stage build from the public images,
#   docker build -t wallet .
# For an engine that cannot pull (this project's machines): a local base from
# Debian's packages (scripts/build-base-image.sh) and the binaries built on the
# host, put in target/docker/bin by scripts/stage-binaries.sh,
#   docker build --build-arg BUILDER_IMAGE=wallet-base:bookworm \
#     --build-arg RUNTIME_IMAGE=wallet-base:bookworm --build-arg BINARIES=host -t wallet .
# (`make compose-up` does all of that.) docker-compose.yml passes the same
# arguments from the environment, with these defaults.

ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# `source`: compile in BUILDER_IMAGE; `host`: copy target/docker/bin.
ARG BINARIES=source

# ---- the binaries -----------------------------------------------------------
FROM ${BUILDER_IMAGE} AS binaries
ARG BINARIES
WORKDIR /src
COPY . .
# One RUN for both ways, so that the classic builder (which runs every stage)
# and BuildKit do the same thing.
RUN set -eu; mkdir -p /out; \
    case "$BINARIES" in \
    source) \
        apt-get update; \
        apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev; \
        cargo build --release --locked -p coordinator -p participant -p projector -p walletctl; \
        for b in coordinator participant projector walletctl; do cp "target/release/$b" /out/; done ;; \
    host) \
        for b in coordinator participant projector walletctl; do \
            [ -x "target/docker/bin/$b" ] || { echo "target/docker/bin/$b is missing: run scripts/stage-binaries.sh" >&2; exit 1; }; \
            cp "target/docker/bin/$b" /out/; \
        done ;; \
    *) echo "BINARIES must be source or host, not $BINARIES" >&2; exit 1 ;; \
    esac

# ---- the runtime --------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# Installs only what the base lacks: the local base has it all already, and
# then the build needs no network. Keep in step with scripts/build-base-image.sh.
RUN set -eu; need=""; \
    for p in ca-certificates curl postgresql etcd-server prometheus tini; do \
        dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; \
    done; \
    if [ -n "$need" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /var/lib/wallet/postgres /var/lib/wallet/etcd /var/lib/wallet/prometheus; \
    chown postgres:postgres /var/lib/wallet/postgres
COPY --from=binaries /out/ /usr/local/bin/
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
COPY docker/prometheus/ /etc/wallet/prometheus/
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]
CMD ["coordinator"]
