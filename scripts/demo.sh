#!/usr/bin/env bash
# The demo: round 0 and two pseudo-label rounds on the bundled sample and encoder, with the defaults
# (co-teacher, class-balanced selection, a 15% labeled holdout that chooses what is delivered).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
pseudo run --rounds 2 "$@"
