#!/usr/bin/env bash
# The test suite (what CI runs): two worker processes, each test file on one worker (module fixtures are
# built once), the longest files first (tests/conftest.py). PSEUDO_TEST_WORKERS=0 runs in this process; extra
# arguments go to pytest (e.g. -m "not slow").
PSEUDO_EXTRAS=test,ray source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKERS=${PSEUDO_TEST_WORKERS:-2}
if [ "$WORKERS" = "0" ]; then
  python -m pytest -q "$@"
else
  # one TensorFlow thread pool thread per worker: on two cores, two workers' spinning pools slow each other
  export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-1}
  python -m pytest -q -n "$WORKERS" --dist loadfile --no-loadscope-reorder --durations=12 "$@"
fi
