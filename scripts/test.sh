#!/usr/bin/env bash
# All the tests: the Rust suite (library, CLI, GPU shaders on whatever adapter exists),
# then the Python package built into a virtual environment (.venv) and its pytest suite,
# which compares it with the CLI built by the first step.
set -euo pipefail
cd "$(dirname "$0")/.."
# The in-process GPU tests load Mesa's Vulkan driver, whose Wayland code prints
# "XDG_RUNTIME_DIR is invalid" on every probe when the variable is unset.
if [ -z "${XDG_RUNTIME_DIR:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"
    export XDG_RUNTIME_DIR
fi

cargo test --release

VENV="${MICROSEG_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "maturin>=1.7,<2" "pytest>=7" "pyarrow>=14" "numpy>=1.22" pandas polars duckdb scipy scikit-learn "pyspark>=4.0,<5" "moto[server]>=5,<6"
# An editable install of the package (the native module built in release mode).
(cd python && VIRTUAL_ENV="$(cd .. && cd "$VENV" && pwd)" PATH="$(cd .. && cd "$VENV" && pwd)/bin:$PATH" \
    maturin develop --release --quiet)
"$VENV/bin/python" -m pytest -q python/tests
