# Sourced by test.sh: start a throw-away PostgreSQL on 127.0.0.1 from Debian's packages and
# export OPTUNA_FMS_POSTGRES_URL. Needs root (apt-get) the first time; otherwise the
# PostgreSQL tests fail in CI (CI=true) and skip elsewhere, with the reason.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
        || echo "could not install postgresql" >&2
fi
bin="$(pg_bin)"
if [ -n "$bin" ]; then
    pgdir="$(mktemp -d /tmp/fms-pg.XXXXXX)"
    chmod 755 "$pgdir"
    run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
    port=$((20000 + RANDOM % 20000))
    run_pg "$bin/initdb" -D "$pgdir/data" -U fms --auth=trust >/dev/null
    run_pg "$bin/pg_ctl" -D "$pgdir/data" -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1" \
        -l "$pgdir/log" -w start >/dev/null
    trap 'run_pg "$bin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true' EXIT
    export OPTUNA_FMS_POSTGRES_URL="postgresql+psycopg2://fms@127.0.0.1:$port/postgres"
fi
