//! The matrix kernels Switchyard adds to llama.cpp: `Q4_1` weights (the default model's type)
//! and `Q8_0` weights (its tied output layer) repacked eight rows at a time and multiplied with
//! AVX2 against four sequences at once, on x86 CPUs without AMX (ggml's AMX kernels already
//! batch). Their C++ lives in `local-engine/ggml-patches/`, compiled into llama.cpp's `ggml-cpu`
//! by the `CMake` hook that `.cargo/config.toml` names.

// Foreign calls into that C++.
#![allow(unsafe_code)]

unsafe extern "C" {
    /// Defined in `ggml-patches/batched_kernels.inc`. Linking it also proves the patch is in the
    /// build.
    fn switchyard_batched_kernels_active() -> bool;
    /// Defined beside it: a kernel on random weights against a double-precision reference.
    #[cfg(test)]
    fn switchyard_batched_kernel_check(q8_0: i32, k: i32, rows: i32, cols: i32, seed: u32, max_error: *mut f64) -> i32;
}

/// Whether `Q4_1` and `Q8_0` weights are multiplied by Switchyard's batched kernels in this process:
/// built for and run on an AVX2 CPU without AMX, and not switched off with
/// `SWITCHYARD_BATCHED_KERNELS=0`.
#[must_use]
pub fn batched_kernels() -> bool {
    // SAFETY: no arguments; it reads the CPU's features and the environment once.
    unsafe { switchyard_batched_kernels_active() }
}

#[cfg(test)]
mod tests {
    use super::switchyard_batched_kernel_check;

    /// The compiled kernels, on the model's own shapes (576 and 1,536 wide) and odd ones, from one
    /// column (a lone decode step) to 13 (three GEMM groups of four and a GEMV left over).
    fn check(q8_0: bool) {
        for (k, rows, cols) in [(576, 64, 1), (576, 576, 8), (1536, 64, 13), (576, 1536, 5), (32, 8, 4), (4096, 16, 3)] {
            for seed in 1..=3 {
                let mut max_error = f64::NAN;
                // SAFETY: plain values in, one f64 written through a valid pointer.
                let verdict = unsafe { switchyard_batched_kernel_check(i32::from(q8_0), k, rows, cols, seed, &raw mut max_error) };
                if verdict == -1 {
                    eprintln!("skipped: the batched kernels are not built for this CPU");
                    return;
                }
                assert_eq!(verdict, 0, "k {k}, {rows} rows, {cols} columns: a GEMM output differs from its GEMV output");
                // ggml's own Q4_1 path is off by ~4e-5 of the products' magnitudes (it rounds each
                // block's activation sum to half precision); these kernels' integer sums are exact.
                assert!(max_error < 1e-6, "k {k}, {rows} rows, {cols} columns: relative error {max_error:e}");
            }
        }
    }

    #[test]
    fn q4_1_kernel_matches_exact_dot_products_and_gemm_matches_gemv() {
        check(false);
    }

    #[test]
    fn q8_0_kernel_matches_exact_dot_products_and_gemm_matches_gemv() {
        check(true);
    }
}
