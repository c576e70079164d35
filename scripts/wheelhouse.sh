#!/usr/bin/env bash
# An offline wheelhouse for the vLLM engine on a CUDA host (docs/gpu.md); the work is in wheelhouse.py beside it.
#   bash scripts/wheelhouse.sh build [--slim] [--split-mib N] [--host-packages FREEZE_FILE] [--out DIR]
#       where a package registry is reachable: the wheels the host lacks, their SHA256SUMS and this script
#   bash DIR/wheelhouse.sh install DIR [--python PYTHON] [--target PATH]
#       on the offline host (bash, python3 and pip are enough): reassemble, check every hash, pip install --no-index
# WHEELHOUSE_PYTHON picks the python3 that runs it (>= 3.10; default python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${WHEELHOUSE_PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "wheelhouse: $python is missing or older than Python 3.10: set WHEELHOUSE_PYTHON=/path/to/python3" >&2
  exit 2
fi
exec "$python" "$here/wheelhouse.py" "$@"
