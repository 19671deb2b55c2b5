#!/usr/bin/env bash
# GPU check (run on a machine with CUDA): half-precision training tests, then the train-step
# benchmark at fp16 and fp32. Packages missing there can be put in a folder named by
# EXTRA_SITE (e.g. pip install --no-deps --target .gpu_site diffusers peft pydicom).
set -x
export PYTHONPATH="${EXTRA_SITE:-.gpu_site}"
timeout 150 python -m pytest tests/trainer/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -15
timeout 100 python bench/train_step.py --device cuda --precision fp16 --resolution 512 --steps 20 --batch-size 4 2>&1 | tail -4
timeout 100 python bench/train_step.py --device cuda --precision no --resolution 512 --steps 20 --batch-size 4 2>&1 | tail -4
