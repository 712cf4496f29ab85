#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel (not the checkout) into a fresh venv, and use it there:
# import, the command line, one loss call, and the py.typed marker that type checkers look for.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=$(mktemp -d)
python -m pip install --quiet build
python -m build --outdir "$dist" . > "$dist/build.log" 2>&1 || { tail -30 "$dist/build.log"; exit 1; }
ls "$dist"/smoothmax-*.tar.gz "$dist"/smoothmax-*.whl > /dev/null
python3 -m venv "$dist/venv"
"$dist/venv/bin/python" -m pip install --quiet "$dist"/smoothmax-*.whl
cd "$dist"  # away from the checkout, so that only the installed package can be imported
"$dist/venv/bin/smoothmax" --help > /dev/null
"$dist/venv/bin/smoothmax" --version
"$dist/venv/bin/python" - <<'PY'
import importlib.resources
import jax.numpy as jnp
import smoothmax as sm
assert "site-packages" in sm.__file__, sm.__file__
assert importlib.resources.files("smoothmax").joinpath("py.typed").is_file()
loss = sm.softmax_loss(jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0]))
print("wheel check: softmax_loss =", float(loss[0]), "from", sm.__file__)
PY
rm -rf "$dist"
