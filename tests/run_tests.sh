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
export OMP_WAIT_POLICY=PASSIVE GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest "$@"
