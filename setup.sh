#!/usr/bin/env bash
# Installs ltc-stream into the current Python, from a fresh machine.
#   bash setup.sh          the package and its runtime dependencies
#   bash setup.sh --test   also pytest, Playwright and Debian's chromium for the browser tests
# On a machine without an NVIDIA GPU, the CPU build torch==2.13.0 is installed first: asking
# pip for plain `torch` there would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
want_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1 ;;
    *) echo "setup.sh: unknown option $arg (use --test)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if "$PY" -c 'import torch' 2>/dev/null; then
  say "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "GPU found: installing torch with CUDA"
  "$PY" -m pip install -q torch
else
  say "no GPU: installing the CPU build torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi

extras=""
[ "$want_tests" = 1 ] && extras="[test]"
say "installing ltc-stream$extras (editable)"
"$PY" -m pip install -q -e ".$extras"

if [ "$want_tests" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  say "installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
say "done"
