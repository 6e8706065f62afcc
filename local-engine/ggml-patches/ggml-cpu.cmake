# Adds Switchyard's batched Q4_1 and Q8_0 kernels (batched_kernels.inc, beside this file) to the
# llama.cpp that llama-cpp-sys-2 builds, without vendoring llama.cpp.
#
# How it gets here: .cargo/config.toml sets CMAKE_PROJECT_ggml_INCLUDE to this file;
# llama-cpp-sys-2's build script hands every CMAKE_* variable to CMake, and CMake includes this
# file right after ggml's project() call. At the end of ggml's directory (when the ggml-cpu target
# exists) it writes a copy of ggml-cpu/repack.cpp with two insertions — the kernels' include
# before the tensor_traits template, and Q4_1 and Q8_0 cases first in the choice of repacked
# layout (on other CPUs, or switched off, the choice goes on as upstream's) — and
# builds that copy instead. An insertion point that is not found fails the build, so a llama.cpp
# update that moves them cannot silently drop the kernel.
set(SWITCHYARD_GGML_PATCHES "${CMAKE_CURRENT_LIST_DIR}")

function(switchyard_patch_ggml_cpu)
    if(NOT TARGET ggml-cpu)
        message(FATAL_ERROR "switchyard: no ggml-cpu target to add the batched kernels to")
    endif()
    set(original "${CMAKE_CURRENT_SOURCE_DIR}/src/ggml-cpu/repack.cpp")
    file(READ "${original}" text)

    set(traits_anchor "template <typename BLOC_TYPE, int64_t INTER_SIZE, int64_t NB_COLS, ggml_type PARAM_TYPE> class tensor_traits : public tensor_traits_base {")
    set(choice_anchor "    if (cur->type == GGML_TYPE_Q4_0) {")
    foreach(anchor traits_anchor choice_anchor)
        string(FIND "${text}" "${${anchor}}" first)
        string(FIND "${text}" "${${anchor}}" last REVERSE)
        if(first EQUAL -1 OR NOT first EQUAL last)
            message(FATAL_ERROR "switchyard: ${anchor} not found exactly once in ${original}")
        endif()
    endforeach()

    string(REPLACE "${traits_anchor}"
        "#include \"batched_kernels.inc\"\n\n${traits_anchor}" text "${text}")
    string(REPLACE "${choice_anchor}"
        "    static const ggml::cpu::repack::tensor_traits<block_q4_1, 8, 8, GGML_TYPE_Q8_0> switchyard_q4_1_8x8;\n    static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 8, GGML_TYPE_Q8_0> switchyard_q8_0_8x8;\n    if (ggml::cpu::repack::switchyard_batched_kernels_enabled() && cur->ne[1] % 8 == 0) {\n        if (cur->type == GGML_TYPE_Q4_1) {\n            return &switchyard_q4_1_8x8;\n        }\n        if (cur->type == GGML_TYPE_Q8_0) {\n            return &switchyard_q8_0_8x8;\n        }\n    }\n${choice_anchor}"
        text "${text}")

    set(patched "${CMAKE_CURRENT_BINARY_DIR}/switchyard-ggml-cpu/repack.cpp")
    # Written only when it changes, so a reconfigure does not rebuild it.
    set(previous "")
    if(EXISTS "${patched}")
        file(READ "${patched}" previous)
    endif()
    if(NOT previous STREQUAL text)
        file(WRITE "${patched}" "${text}")
    endif()

    get_target_property(sources ggml-cpu SOURCES)
    list(TRANSFORM sources REPLACE "^(.*/)?ggml-cpu/repack\\.cpp$" "${patched}")
    set_property(TARGET ggml-cpu PROPERTY SOURCES ${sources})
    target_include_directories(ggml-cpu PRIVATE
        "${CMAKE_CURRENT_SOURCE_DIR}/src" "${CMAKE_CURRENT_SOURCE_DIR}/src/ggml-cpu" "${SWITCHYARD_GGML_PATCHES}")
    message(STATUS "switchyard: ggml-cpu builds ${patched} (batched Q4_1 and Q8_0 kernels)")
endfunction()

cmake_language(DEFER CALL switchyard_patch_ggml_cpu)
