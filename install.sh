#!/usr/bin/env bash
# genlab's set-up, the README's one command: `bash install.sh`. Installs this checkout (editable)
# with every extra and the test tools, then, on a Debian/Ubuntu machine, Debian's Fashion-MNIST
# (dataset-fashion-mnist), which `python train.py` finds without a network; elsewhere, or
# without root/sudo, torchvision downloads the data on the first run. Safe to re-run.
# PYTHON=/path/to/python picks the interpreter (default: python, else python3).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

"$PYTHON" -m pip install --disable-pip-version-check -e ".[dev]"

if command -v apt-get >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        as_root=(none)
    fi
    if [ "${as_root[*]}" != none ] \
        && { "${as_root[@]}" apt-get update -qq || true; } \
        && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq dataset-fashion-mnist
    then
        echo "install.sh: Fashion-MNIST installed from Debian (/usr/share/datasets/fashion-mnist)."
    else
        echo "install.sh: could not install dataset-fashion-mnist (needs root or sudo); without" \
            "it, python train.py downloads Fashion-MNIST with torchvision (needs internet)." >&2
    fi
fi
