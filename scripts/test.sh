#!/usr/bin/env bash
# The test suite (what CI runs).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -q "$@"
