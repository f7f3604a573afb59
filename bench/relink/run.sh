#!/usr/bin/env bash
# Relink vs cp benchmark in a Debian guest (see run.py); needs root (QEMU, chroot build).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python bench/relink/run.py "$@"
