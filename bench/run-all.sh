#!/usr/bin/env bash
# `make bench`: every benchmark of the collection, one after the other.
# Each prints its own table of ratios measured in the same run; all need root.
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/facts/run.py "$@"
python bench/relink/run.py
