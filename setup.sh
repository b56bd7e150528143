#!/usr/bin/env bash
# Installs ltc-stream into the current Python, from a fresh machine.
#   bash setup.sh            the package and its runtime dependencies, at the versions in constraints.txt
#   bash setup.sh --test     also pytest, Playwright and Debian's chromium for the browser tests
#   bash setup.sh --latest   ignore constraints.txt: the newest versions pyproject.toml allows (what a
#                            new user of `pip install ltc-stream` gets; `bash .ci/run --latest` tests it)
# On a machine without an NVIDIA GPU, the CPU build torch==2.13.0 is installed first: asking pip for
# plain `torch` there would pull several GB of CUDA packages.
#
# constraints.txt pins every package, for Python 3.10 and newer, from a resolution whose tests pass.
# Refresh it with (then run `bash .ci/run` and commit both):
#   uv pip compile pyproject.toml --extra test --universal --python-version 3.10 -c constraints.in -o constraints.txt
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
want_tests=0
pinned=1
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1 ;;
    --latest) pinned=0 ;;
    *) echo "setup.sh: unknown option $arg (use --test, --latest)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
pip_install() { "$PY" -m pip install -q "$@"; }
if [ "$pinned" = 1 ]; then
  [ -f constraints.txt ] || { echo "setup.sh: constraints.txt is missing (or use --latest)" >&2; exit 2; }
  pip_install() { "$PY" -m pip install -q -c constraints.txt "$@"; }
  say "versions pinned by constraints.txt (--latest installs the newest allowed)"
else
  say "--latest: installing the newest versions pyproject.toml allows"
fi

if "$PY" -c 'import torch' 2>/dev/null; then
  say "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "GPU found: installing torch with CUDA"
  pip_install torch
else
  say "no GPU: installing the CPU build torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi

extras=""
[ "$want_tests" = 1 ] && extras="[test]"
say "installing ltc-stream$extras (editable)"
pip_install -e ".$extras"

if [ "$want_tests" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  say "installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
say "done"
