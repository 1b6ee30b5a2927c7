#!/usr/bin/env bash
# Create the peers' virtual environments for `tessera bench search --peers ...` (never dependencies of
# Tessera): benchmarks/peers/<peer>/venv with the peer's runner script beside it.
#   colbert-ai         Stanford ColBERT/PLAID engine; torch 2.13.0 (the CPU wheel on this machine) + faiss-cpu;
#                      its C++ extensions compile at first use (warmed up here)
#   pylate-fastplaid   PyLate + fast-plaid; fast-plaid ships builds for fixed torch versions (1.4.6.2110:
#                      torch==2.11.0), so this venv gets that torch from PyPI (a CUDA build of a few GB; it
#                      runs on the CPU here)
# Usage: benchmarks/peers/setup.sh [colbert-ai|pylate-fastplaid ...]   (default: both, one after the other)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

make_venv() {
    local venv="$here/$1/venv"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    echo "$venv"
}

setup_colbert_ai() {
    local venv
    venv="$(make_venv colbert-ai)"
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
    "$venv/bin/python" -m pip install -q "colbert-ai==0.2.22" "faiss-cpu" "numpy" "torch==2.13.0"
    # compile the C++ extensions once (ColBERT builds them with ninja at first use)
    "$venv/bin/python" "$here/colbert-ai/runner.py" --warm-up
    echo "colbert-ai venv ready: $venv/bin/python"
}

setup_pylate_fastplaid() {
    local venv
    venv="$(make_venv pylate-fastplaid)"
    "$venv/bin/python" -m pip install -q "torch==2.11.0"
    "$venv/bin/python" -m pip install -q "pylate==1.6.0" "fast-plaid==1.4.6.2110" "torch==2.11.0"
    "$venv/bin/python" "$here/pylate-fastplaid/runner.py" --warm-up
    echo "pylate-fastplaid venv ready: $venv/bin/python"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(colbert-ai pylate-fastplaid)
for t in "${targets[@]}"; do
    case "$t" in
        colbert-ai) setup_colbert_ai ;;
        pylate-fastplaid) setup_pylate_fastplaid ;;
        *) echo "unknown peer '$t' (known: colbert-ai, pylate-fastplaid)" >&2; exit 2 ;;
    esac
done
