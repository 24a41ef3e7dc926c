#!/usr/bin/env bash
# The image's entry point. `entrypoint.sh ROLE [ARGS...]`:
#   postgres     a PostgreSQL server on 0.0.0.0:5432 with its data in
#                /var/lib/wallet/postgres (made on first start, with the
#                databases named by WALLET_PG_DATABASES, default "wallet")
#   etcd         a single-member etcd on 0.0.0.0:2379, data in /var/lib/wallet/etcd
#   init         the one-shot job: writes the partition map unless one
#                exists (walletctl cluster init), from WALLET_INIT_NODES
#                ("node-1=http://participant-1:7001 ...") and WALLET_PARTITIONS;
#                and the operator's API key (WALLET_INIT_API_KEY_FILE) unless
#                it exists
#   prometheus   Prometheus with /etc/wallet/prometheus/prometheus.yml and
#                the wallet console (dashboard) at /consoles/wallet.html
#   anything else is run as is (coordinator, participant, projector, walletctl, bash).
set -euo pipefail

role="${1:-coordinator}"
shift || true

pg_bin() {
    compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -n 1
}

case "$role" in
postgres)
    bin=$(pg_bin)
    data=/var/lib/wallet/postgres/data
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres /var/lib/wallet/postgres
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        rm -rf "$data"
        "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=trust \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        # Inside the compose network only (its ports are published on
        # 127.0.0.1): trust, like the dev cluster's servers.
        echo "host all all 0.0.0.0/0 trust" >>"$data/pg_hba.conf"
        "$bin/pg_ctl" -D "$data" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start >/dev/null
        for db in ${WALLET_PG_DATABASES:-wallet}; do
            "$bin/psql" -X -q -h /tmp -U postgres -d postgres -c "CREATE DATABASE $db"
        done
        "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
    # The dev cluster's settings (devcluster/src/postgres.rs): durable commits.
    exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c port=5432 \
        -c unix_socket_directories=/tmp -c max_connections=200 \
        -c max_prepared_transactions=200 -c shared_buffers=128MB -c fsync=on \
        -c synchronous_commit=on -c full_page_writes=on -c huge_pages=off \
        -c log_line_prefix='%m [%p] ' "$@"
    ;;
etcd)
    name="${WALLET_ETCD_NAME:-etcd}"
    exec etcd --name "$name" --data-dir /var/lib/wallet/etcd \
        --listen-client-urls http://0.0.0.0:2379 \
        --advertise-client-urls "http://$name:2379" \
        --listen-peer-urls http://0.0.0.0:2380 \
        --initial-advertise-peer-urls "http://$name:2380" \
        --initial-cluster "$name=http://$name:2380" \
        --logger zap --log-outputs stderr "$@"
    ;;
init)
    nodes=()
    for n in ${WALLET_INIT_NODES:?WALLET_INIT_NODES names the participants}; do
        nodes+=(--node "$n")
    done
    set +e
    walletctl cluster init --partitions "${WALLET_PARTITIONS:-64}" "${nodes[@]}" "$@"
    rc=$?
    set -e
    case $rc in
    0) echo "init: partition map written" ;;
    5) echo "init: a partition map exists; left as it is" ;;
    *) exit $rc ;;
    esac
    # The operator's API key (scope admin), once; written to its file,
    # never printed.
    key="${WALLET_INIT_API_KEY_FILE:?WALLET_INIT_API_KEY_FILE names the file of the operator key}"
    if [ ! -s "$key" ]; then
        walletctl keys create --tenant operator --scopes admin --write-to "$key"
    fi
    walletctl nodes list
    ;;
prometheus)
    exec prometheus --config.file=/etc/wallet/prometheus/prometheus.yml \
        --storage.tsdb.path=/var/lib/wallet/prometheus \
        --web.listen-address=0.0.0.0:9090 \
        --web.console.templates=/etc/wallet/prometheus/consoles \
        --web.console.libraries=/etc/prometheus/console_libraries "$@"
    ;;
*)
    exec "$role" "$@"
    ;;
esac
