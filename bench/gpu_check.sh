#!/bin/sh
# The paper-scale GPU check (at most 8 minutes): bench/gpu_check.py with the project's venv; see BENCHMARKS.md.
cd "$(dirname "$0")/.." && exec .venv/bin/python bench/gpu_check.py "$@"
