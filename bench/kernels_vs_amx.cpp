// The local engine's matrix products, one weight matrix at a time: ggml's AMX kernels (its AMX
// buffer), Switchyard's batched kernels (the CPU_REPACK buffer, local-engine/ggml-patches) and
// ggml's plain dot products (no repacking), for the default model's shapes and M sequences (M
// columns of activations). `make bench-kernels` builds it against the engine's own llama.cpp build
// and prints a table; a column is n/a where the CPU or the build lacks that path. Weights are hot
// in cache here, so the figures compare kernels, not memory bandwidth.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>
#include <string>

static double run(ggml_backend_buffer_type_t buft, ggml_type type, int K, int N, int M, int threads, int iters) {
    ggml_init_params ip = { 16 * ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * wctx = ggml_init(ip);
    ggml_tensor * w = ggml_new_tensor_2d(wctx, type, K, N);
    ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0, 0.05f);
    std::vector<float> wf((size_t) K * N);
    for (auto & v : wf) v = nd(rng);
    std::vector<uint8_t> q(ggml_row_size(type, K) * N);
    ggml_quantize_chunk(type, wf.data(), q.data(), 0, N, K, nullptr);
    ggml_backend_tensor_set(w, q.data(), 0, q.size());

    ggml_context * xctx = ggml_init(ip);
    ggml_tensor * x = ggml_new_tensor_2d(xctx, GGML_TYPE_F32, K, M);
    ggml_tensor * y = ggml_mul_mat(xctx, w, x);
    ggml_cgraph * g = ggml_new_graph(xctx);
    ggml_build_forward_expand(g, y);
    ggml_backend_t cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cpu, threads);
    ggml_backend_buffer_t xbuf = ggml_backend_alloc_ctx_tensors(xctx, cpu);
    std::vector<float> xf((size_t) K * M);
    for (auto & v : xf) v = nd(rng) * 20;
    ggml_backend_tensor_set(x, xf.data(), 0, xf.size() * 4);
    for (int i = 0; i < 2; i++) ggml_backend_graph_compute(cpu, g);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; i++) ggml_backend_graph_compute(cpu, g);
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
    ggml_backend_buffer_free(xbuf); ggml_backend_buffer_free(wbuf); ggml_backend_free(cpu);
    ggml_free(xctx); ggml_free(wctx);
    return us;
}

int main() {
    ggml_cpu_init();
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    auto get_extra = (ggml_backend_buffer_type_t * (*)(ggml_backend_dev_t)) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    ggml_backend_buffer_type_t amx = nullptr, repack = nullptr;
    for (ggml_backend_buffer_type_t * b = get_extra(dev); b && *b; b++) {
        std::string name = ggml_backend_buft_name(*b);
        if (name == "AMX") amx = *b;
        if (name == "CPU_REPACK") repack = *b;
    }
    ggml_backend_buffer_type_t plain = ggml_backend_cpu_buffer_type();
    struct Shape { const char * what; ggml_type t; int K, N; };
    Shape shapes[] = { {"Q4_1 ffn up 576x1536", GGML_TYPE_Q4_1, 576, 1536}, {"Q4_1 ffn down 1536x576", GGML_TYPE_Q4_1, 1536, 576},
                       {"Q8_0 output 576x49152", GGML_TYPE_Q8_0, 576, 49152} };
    printf("| weights (K x N) | M | threads | AMX µs | Switchyard µs | plain ggml µs |\n|---|---:|---:|---:|---:|---:|\n");
    for (auto & s : shapes) for (int threads : {1, 2}) for (int M : {1, 2, 4, 8, 16, 32, 128, 512}) {
        // About the same time per cell: fewer runs for more work.
        const int iters = std::max(3, std::min(400, (int) (4e9 / ((double) s.K * s.N * M))));
        auto cell = [&](ggml_backend_buffer_type_t buft) {
            char out[32] = "n/a";
            if (buft != nullptr) {
                snprintf(out, sizeof out, "%.1f", run(buft, s.t, s.K, s.N, M, threads, iters));
            }
            return std::string(out);
        };
        const std::string a = cell(amx), r = cell(repack), p = cell(plain);
        printf("| %s | %d | %d | %s | %s | %s |\n", s.what, M, threads, a.c_str(), r.c_str(), p.c_str());
        fflush(stdout);
    }
}
