#!/usr/bin/env bash
# Create benchmarks/peers/pylate/venv: PyLate in a virtual environment of its own, for the encoding-speed
# comparison of `tessera bench encode --pylate`. PyLate is never a dependency of Tessera.
# torch is installed first (the same pinned CPU wheel as Tessera's), so that pip does not pull another build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/pylate/venv"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
pylate_spec="${PYLATE_SPEC:-pylate}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$torch_spec" ${TORCH_PIP_ARGS:-}
"$venv/bin/python" -m pip install -q "$pylate_spec" "$torch_spec"
"$venv/bin/python" -c "import pylate, torch; print('pylate', pylate.__version__, 'torch', torch.__version__)"
echo "PyLate venv ready: $venv/bin/python"
