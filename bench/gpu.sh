#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks, in order of importance, each section's output in
# RESULTS_DIR (default bench/gpu-results): the CUDA tests (`--ignored`), then dapt and step 2
# (taft with and without the cache, tapt) at distilcamembert's shape against their Python
# peers, in bf16 and fp16. Needs a build with the `cuda` feature:
#   cargo test --release --features cuda --no-run   # taft and the test binary it prints
#   TAFT_BIN=target/release/taft bench/gpu.sh target/release/deps/it-<hash>
# and a Python with torch, transformers, tokenizers and pyarrow as `python3` (PYTHON).
# Sections after the test binary pick some (cuda tests dapt-bf16 dapt-fp16 finetune-bf16
# finetune-fp16); none runs them all.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tests=${1:?usage: bench/gpu.sh TEST_BINARY [SECTION...]}
shift
wanted=" $* "
py=${PYTHON:-python3}
out=${RESULTS_DIR:-$here/gpu-results}
mkdir -p "$out"
: "${TAFT_BIN:?set TAFT_BIN to a taft built with --features cuda}"
export TAFT_BIN
section() {
    local name=$1
    shift
    if [ "$wanted" != "  " ] && [[ $wanted != *" $name "* ]]; then return; fi
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$out/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s"
    tail -n 8 "$out/$name.txt"
}
section cuda "$py" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
section tests "$tests" --ignored --test-threads 1 --nocapture
# Steps/s after the first 10 steps on both sides: the CUDA context, cuBLAS handles and kernels
# loaded on first use would otherwise be a large share of a short run.
common=(--rounds 3 --threads 4 --device cuda --warmup 10)
section dapt-bf16 "$py" "$here/dapt.py" "${common[@]}" --precision bf16 --models 2 --steps 100 --batch 32 --block 512
section finetune-fp16 "$py" "$here/finetune.py" "${common[@]}" --precision fp16 --models 1 --batch 32 --steps 60 \
    --runs taft,taft+cache,tapt
section dapt-fp16 "$py" "$here/dapt.py" "${common[@]}" --precision fp16 --models 2 --steps 100 --batch 32 --block 512
section finetune-bf16 "$py" "$here/finetune.py" "${common[@]}" --precision bf16 --models 1 --batch 32 --steps 60 \
    --runs taft,taft+cache,tapt
