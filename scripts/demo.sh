#!/usr/bin/env bash
# The demo: round 0 and two pseudo-label rounds on the bundled sample and encoder.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
pseudo run --rounds 2 "$@"
