#!/bin/sh
# Install what the tests need and run them: the README's test command and what CI runs.
#   sh tests/run_tests.sh            # the default suite
#   sh tests/run_tests.sh -m slow    # the slow tests (extra pytest arguments pass through)
set -eu
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium for the browser tests" >&2
    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
        || echo "warning: could not install chromium; browser tests will skip (fail under CI=true)" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# the optional diffusers adapter: its tests skip without it, and fail under CI=true
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-diffusers.txt
export OMP_WAIT_POLICY=PASSIVE GRADIO_ANALYTICS_ENABLED=False

# A throw-away PostgreSQL server for the survey's PostgreSQL tests, when the machine has one
# (Debian's postgresql package) and no URL was given; they skip otherwise.
pg_dir=""
if [ -z "${SURVEY_TEST_POSTGRES_URL:-}" ] && [ "$(id -u)" = "0" ] && id postgres >/dev/null 2>&1; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1 || true)
    if [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ]; then
        pg_dir=$(mktemp -d)
        chown postgres "$pg_dir"
        pg_port=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
        if su postgres -c "$pg_bin/initdb -D $pg_dir/data -A trust -U postgres >/dev/null 2>&1 && \
                $pg_bin/pg_ctl -D $pg_dir/data -o '-k $pg_dir -p $pg_port -h 127.0.0.1' -l $pg_dir/log -w start >/dev/null"; then
            export SURVEY_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/postgres"
        else
            echo "warning: could not start PostgreSQL; its tests will skip" >&2
        fi
    fi
fi
stop_pg() {
    if [ -n "$pg_dir" ] && [ -d "$pg_dir/data" ]; then
        su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)/pg_ctl -D $pg_dir/data stop -m fast" >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    fi
}
trap stop_pg EXIT
.venv/bin/python -m pytest "$@"
