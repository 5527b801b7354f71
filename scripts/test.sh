#!/usr/bin/env bash
# The test suite: ./scripts/test.sh [pytest args]. Creates ./.venv on first use.
. "$(dirname "$0")/_venv.sh"
# two workers, a test file per worker (module fixtures such as a trained run are built once)
exec python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
