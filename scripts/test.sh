#!/usr/bin/env bash
# The test suite (what CI runs): two worker processes, each test file on one worker (module fixtures are
# built once). PSEUDO_TEST_WORKERS=0 runs in this process; extra arguments go to pytest (e.g. -m "not slow").
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKERS=${PSEUDO_TEST_WORKERS:-2}
if [ "$WORKERS" = "0" ]; then
  python -m pytest -q "$@"
else
  python -m pytest -q -n "$WORKERS" --dist loadfile "$@"
fi
