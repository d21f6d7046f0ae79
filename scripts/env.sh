# Sourced by demo.sh and test.sh: a virtual environment in .venv with pseudo and its test tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# the extras to install: test (pytest); scripts/test.sh adds ray (the --executor ray tests run a local cluster)
EXTRAS=${PSEUDO_EXTRAS:-test}
IMPORTS="pseudolabel, pytest, tensorflow, tf_keras, transformers"
case ",$EXTRAS," in *,ray,*) IMPORTS="$IMPORTS, ray" ;; esac
if ! python -c "import $IMPORTS" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.installed ]; then
  echo "installing pseudo and its dependencies into .venv (a few minutes the first time; log: .venv/install.log)"
  if ! { python -m pip install -q --upgrade pip && python -m pip install -q -e ".[$EXTRAS]"; } >.venv/install.log 2>&1; then
    tail -n 20 .venv/install.log >&2
    echo "error: installing into .venv failed; the whole log is in .venv/install.log" >&2
    exit 1
  fi
  touch .venv/.installed
fi
export TF_CPP_MIN_LOG_LEVEL=3
