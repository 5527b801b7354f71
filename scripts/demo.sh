#!/usr/bin/env bash
# The whole study on built-in phantom X-rays: ./scripts/demo.sh [--out DIR]. Creates ./.venv on first use.
. "$(dirname "$0")/_venv.sh"
exec xrayfeat demo "$@"
