#!/usr/bin/env bash
# One device call for the CUTLASS backend: correctness, then GEMM and model tables with every
# column measured in the same process. Logs go to $OUT. Usage on the device machine:
#   bash scripts/gpu_cutlass_run.sh [steps...]   (default: check sweep gemm model)
# The library comes from SMOOTHQUANT_CUTLASS_LIB (built ahead of time, e.g. on a CPU machine:
# python -m smoothquant.kernels.cuda.build --out DIR) or is built here on first use (step jit).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
steps=${*:-check sweep gemm model}
for step in $steps; do
  case $step in
    check) timeout ${T_CHECK:-80} python3 scripts/cutlass_check.py > "$OUT/cutlass_check.log" 2>&1
      grep -E "^FAIL|passed|failed|Error" "$OUT/cutlass_check.log" | tail -8;;
    sweep)  # every CUTLASS config on every shape -> the configuration table (kernels/cuda/configs.RULES)
      timeout ${T_SWEEP:-170} python3 -m smoothquant bench gemm --models llama-2-7b,llama-2-13b,llama-2-7b-fused \
        --m ${SWEEP_M:-1,16,64,128,512,2048,8192} --methods ours_gemm --sweep-cutlass --reps 10 \
        --write-table "$OUT/cutlass_table.json" --json "$OUT/gemm_sweep.json" > "$OUT/gemm_sweep.log" 2>&1
      tail -2 "$OUT/gemm_sweep.log"; cat "$OUT/cutlass_table.json"
      export SMOOTHQUANT_CUTLASS_TABLE="$OUT/cutlass_table.json";;
    gemm)  # the README's GEMM table
      timeout ${T_GEMM:-110} python3 -m smoothquant bench gemm --models llama-2-7b,llama-2-13b,llama-2-7b-fused \
        --json "$OUT/gemm.json" > "$OUT/gemm.log" 2>&1; grep -E "^llama" "$OUT/gemm.log" | tail -27 | cut -c1-118;;
    model)  # the README's model table, CUTLASS (auto) and Triton in the same run
      timeout ${T_MODEL:-225} python3 -m smoothquant bench model --schemes ${SCHEMES:-w8a8,O3} --backends auto,triton \
        --prefill 1x512,4x2048 --decode 1@1024,16@1024 --kv-cache float,int8 --reps 10 \
        --json "$OUT/model.json" > "$OUT/model.log" 2>&1; tail -9 "$OUT/model.log";;
    jit)  # the first-use build on this machine's cores, into a fresh cache
      env -u SMOOTHQUANT_CUTLASS_LIB SMOOTHQUANT_CACHE=/tmp/sqcache timeout 400 \
        python3 -m smoothquant.kernels.cuda.build > "$OUT/jit_build.log" 2>&1; tail -3 "$OUT/jit_build.log";;
    tests) timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_cutlass.py tests/test_runtime.py \
        tests/test_kernels.py 2>&1 | tail -4;;
  esac
done
