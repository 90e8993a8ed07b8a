#!/usr/bin/env bash
# One device call: kernel correctness, then GEMM and model tables with programmatic dependent
# launch on and off (SMOOTHQUANT_PDL), every pair measured on the same machine. Logs go to $OUT.
# Usage on the device machine: bash scripts/gpu_pdl_run.sh [steps...]  (default: all)
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
steps=${*:-check gemm model}
for step in $steps; do
  case $step in
    check) python3 scripts/gpu_check.py > "$OUT/check.log" 2>&1; tail -3 "$OUT/check.log";;
    gemm)
      python3 -m smoothquant bench gemm --models llama-2-7b --sweep --json "$OUT/gemm_pdl.json" > "$OUT/gemm_pdl.log" 2>&1
      SMOOTHQUANT_PDL=0 python3 -m smoothquant bench gemm --models llama-2-7b --json "$OUT/gemm_nopdl.json" > "$OUT/gemm_nopdl.log" 2>&1
      grep -E "^llama" "$OUT/gemm_nopdl.log" | cut -c1-60; grep -E "^llama" "$OUT/gemm_pdl.log" | cut -c1-60;;
    model)
      for pdl in 1 0; do
        SMOOTHQUANT_PDL=$pdl python3 -m smoothquant bench model --schemes w8a8 --prefill 1x512,4x2048 \
          --decode 1@1024,16@1024 --reps 10 --json "$OUT/model_pdl$pdl.json" > "$OUT/model_pdl$pdl.log" 2>&1
        echo "PDL=$pdl"; tail -4 "$OUT/model_pdl$pdl.log"
      done;;
    fusedtest) python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_kernels.py tests/test_kv_cache.py 2>&1 | tail -3;;
    quick)
      python3 -m smoothquant bench model --schemes w8a8 --unfused --prefill 1x512,4x2048 \
        --decode 1@1024,16@1024 --reps 10 --json "$OUT/model_quick.json" > "$OUT/model_quick.log" 2>&1
      tail -5 "$OUT/model_quick.log";;
    fused)  # the README's model table: every scheme, fused (default) and unfused sibling GEMMs
      python3 -m smoothquant bench model --schemes O1,O3,w8a8 --unfused --prefill 1x512,4x2048 \
        --decode 1@1024,16@1024 --reps 10 --json "$OUT/model_fused.json" > "$OUT/model_fused.log" 2>&1
      tail -9 "$OUT/model_fused.log";;
    head)
      python3 -m smoothquant bench model --schemes w8a8 --quantize-lm-head --prefill 1x512 \
        --decode 1@1024 --reps 10 --json "$OUT/model_head.json" > "$OUT/model_head.log" 2>&1
      tail -4 "$OUT/model_head.log";;
    gemmfused)
      python3 -m smoothquant bench gemm --models llama-2-7b-fused --json "$OUT/gemm_fused.json" > "$OUT/gemm_fused.log" 2>&1
      grep -E "^llama" "$OUT/gemm_fused.log" | sort -u | cut -c1-60;;
    kvcheck) python3 scripts/kv_gpu_check.py > "$OUT/kv_check.log" 2>&1; tail -45 "$OUT/kv_check.log";;
    kvtest) python3 -m pytest -q -p no:cacheprovider tests/test_kv_cache.py 2>&1 | tail -2;;
    kv)
      python3 -m smoothquant bench model --schemes w8a8 --prefill '' --decode 1@1024,16@1024,16@4096 \
        --kv-cache float,int8 --json "$OUT/model_kv.json" > "$OUT/model_kv.log" 2>&1
      tail -6 "$OUT/model_kv.log";;
    quant) python3 scripts/bench_quant.py > "$OUT/quant.log" 2>&1; cat "$OUT/quant.log";;
    tune512)
      python3 scripts/bench_quant.py > "$OUT/quant.log" 2>&1; cat "$OUT/quant.log"
      python3 -m smoothquant bench gemm --models llama-2-7b,llama-2-7b-fused --m 512 --sweep \
        --json "$OUT/gemm512.json" > "$OUT/gemm512.log" 2>&1
      grep -E "^llama" "$OUT/gemm512.log" | sort -u | cut -c1-60;;
    explore) python3 scripts/gpu_explore.py ${EXPLORE:-} > "$OUT/explore.log" 2>&1; tail -110 "$OUT/explore.log";;
    abo3) python3 scripts/ab_o3_int8_out.py > "$OUT/ab_o3.log" 2>&1; grep out "$OUT/ab_o3.log";;
    profile) python3 scripts/gpu_explore.py profile > "$OUT/profile.log" 2>&1; tail -70 "$OUT/profile.log";;
    env) (which nvcc; ls -d /usr/local/cuda* ; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv) 2>&1 | head;;
    gemm13)
      python3 -m smoothquant bench gemm --json "$OUT/gemm_all.json" > "$OUT/gemm_all.log" 2>&1
      grep -E "^llama" "$OUT/gemm_all.log" | cut -c1-60;;
  esac
done
