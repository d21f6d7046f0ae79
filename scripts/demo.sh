#!/usr/bin/env bash
# The demo: round 0 and two pseudo-label rounds on the bundled sample and encoder.
# The bundled encoder has random weights: averaged over five folds its pool predictions rarely reach 0.9,
# so the demo selects at 0.7 (OOF precision about 0.95 there, see `pseudo select` and the README).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
pseudo run --rounds 2 --threshold 0.7 "$@"
