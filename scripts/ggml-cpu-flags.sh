#!/usr/bin/env bash
# Prints the llama.cpp (ggml) x86 instruction-set options this machine's CPU supports, one
# `GGML_<OPTION>=ON` per line. The Makefile exports them for every cargo build, so the embedded
# engine is compiled for the CPU that builds it (as GGML_NATIVE would, which llama-cpp-sys-2 turns
# off): AVX-512 VNNI and AMX give ggml batched int8 kernels for Q4_1, the default model's type,
# which the AVX2 baseline lacks. llama-cpp-sys-2 forwards GGML_* variables to CMake.
#
# SWITCHYARD_PORTABLE=1 prints no instruction-set option: the AVX2/FMA/F16C baseline, for binaries
# that must run on other x86-64 machines (the Dockerfile builds that way); non-x86 machines get none
# either.
set -euo pipefail
# llamafile's tinyBLAS kernels (F16, Q8_0 and Q4_0 matrix products: the attention products and the
# tied output layer) pick their tiling by the number of tokens in a step, which changes the order
# of floating-point sums: a prompt decoded in one chunk and the same prompt reused from the cache
# then answer differently. Without them every product is ggml's row-by-row dot product, the same
# whatever else is in the step ([local].batch_invariant turns flash attention off for the rest).
# SWITCHYARD_LLAMAFILE=1 keeps them (about 8 % more throughput with batch_invariant = false).
[ "${SWITCHYARD_LLAMAFILE:-0}" = 1 ] || echo GGML_LLAMAFILE=OFF
[ "${SWITCHYARD_PORTABLE:-0}" = 1 ] && exit 0
[ "$(uname -m)" = x86_64 ] || exit 0
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
has avx && echo GGML_AVX=ON
has avx2 && echo GGML_AVX2=ON
has bmi2 && echo GGML_BMI2=ON
has fma && echo GGML_FMA=ON
has f16c && echo GGML_F16C=ON
has sse4_2 && echo GGML_SSE42=ON
has avx_vnni && echo GGML_AVX_VNNI=ON
# ggml's GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
if has avx512f avx512cd avx512vl avx512dq avx512bw; then
  echo GGML_AVX512=ON
  has avx512vbmi && echo GGML_AVX512_VBMI=ON
  has avx512_vnni && echo GGML_AVX512_VNNI=ON
  has avx512_bf16 && echo GGML_AVX512_BF16=ON
  # ggml's AMX kernels need AVX-512 VNNI beside the tiles.
  if has amx_tile amx_int8 avx512_vnni; then
    echo GGML_AMX_TILE=ON
    echo GGML_AMX_INT8=ON
    has amx_bf16 && echo GGML_AMX_BF16=ON
  fi
fi
exit 0
