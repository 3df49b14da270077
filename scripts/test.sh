#!/usr/bin/env bash
# The test command of README and CI: install (scripts/setup.sh: builds once, then a few seconds
# while nothing it depends on changes), then run pytest.
# Extra arguments go to pytest (e.g. `-m slow` for the slow tests).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
"${VENV:-.venv}/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
