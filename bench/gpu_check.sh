#!/usr/bin/env bash
# One prepared GPU check for issue 20 (CUDA): at most 8 minutes on one GPU, no internet, one table
# at the end. bench/gpu_check.py does the work (its docstring says what each part measures):
#   (a) tests/test_cuda.py: CUDA against the CPU reference for every cell and path, train.py,
#       sample.py and -resume on -gpuid 0, two processes on one GPU (unittest: no pytest needed);
#   (b) training chars/s of train.py's step (a CUDA graph, and with graphs off) against a bare cuDNN
#       nn.LSTM one-hot script at 2x128, 2x256, 3x512 (vocabulary 65) and 2x256 (vocabulary 2,583),
#       fp32 and bf16, and the user's command (train.py -rnn_size 256 -num_layers 2) on a
#       lyrics-like text;
#   (c) sampling chars/s with 1 and 64 streams, one stream also with graphs off;
#   (d) two processes on one GPU: NCCL if it takes them, else train.py talks over gloo;
#   (e) graphs exact: the weights of (b)'s step replayed as a CUDA graph against the eager step's
#       after a few steps (anything but 0 fails).
# (a) also checks that cuDNN takes the model's weights without a copy (one buffer, no warning).
# The lyrics are not bundled (copyrighted): the user's command runs on a text made of 红楼梦 with
# the lyrics' 63,282 characters and 2,583 distinct ones.
#
#   bench/gpu_check.sh           # on the GPU machine, from anywhere (it runs in the repository root)
#   bench/gpu_check.sh --cpu     # the dry run on a CPU machine: tiny sizes, the CUDA tests skipped, gloo
#
# Python: ${PYTHON:-python3}, with the system's torch; no .venv needed. It needs torch, numpy and h5py.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIMIT=480  # seconds: the 8 minutes; gpu_check.py plans its parts to end well before

if ! missing=$("$PYTHON" -c '
import importlib.util
print(" ".join(name for name in ("torch", "numpy", "h5py") if importlib.util.find_spec(name) is None))'); then
  echo "gpu_check: cannot run $PYTHON (set PYTHON=/path/to/python3)" >&2
  exit 2
fi
if [ -n "$missing" ]; then
  echo "gpu_check: $PYTHON lacks $missing; this check needs torch, numpy and h5py (and nothing from the internet)" >&2
  exit 2
fi
"$PYTHON" -c 'import torch, numpy, h5py' || { echo "gpu_check: importing torch, numpy, h5py failed" >&2; exit 2; }

if command -v timeout >/dev/null 2>&1; then
  exec timeout --kill-after=15 "$LIMIT" "$PYTHON" bench/gpu_check.py "$@"
fi
exec "$PYTHON" bench/gpu_check.py "$@"
