#!/usr/bin/env bash
# The test suite: ./scripts/test.sh [pytest args]. Creates ./.venv on first use.
. "$(dirname "$0")/_venv.sh"
exec python -m pytest -q -p no:cacheprovider "$@"
