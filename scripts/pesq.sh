#!/usr/bin/env bash
# Wideband PESQ for the benches: makes .venv-bench once (the `pesq` package from
# PyPI, ITU-T P.862.2, and numpy), then runs scripts/pesq_wb.py with its arguments.
#   scripts/pesq.sh REFERENCE.wav DEGRADED.wav [...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv-bench"
if ! "$VENV/bin/python" -c 'import pesq, numpy' 2>/dev/null; then
  python3 -m venv --clear "$VENV" >&2
  # pesq 0.0.4 builds its C extension from the sdist: it needs numpy and cython
  # at build time, which pip fetches into an isolated build environment.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'numpy>=1.26,<3' 'pesq==0.0.4' >&2
fi
exec "$VENV/bin/python" "$ROOT/scripts/pesq_wb.py" "$@"
