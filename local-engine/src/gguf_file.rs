//! Whether a GGUF file holds all the tensor data its header describes. llama.cpp's header reader
//! (`gguf_init_from_file` without allocating) stops at the end of the tensor table, so a file cut
//! short in its weights (an interrupted download or copy) reads as valid there, and only the
//! engine's load fails, at start. `llama-cpp-2`'s `GgufContext` does not expose the tensors'
//! offsets and sizes, hence the few raw calls here; nothing else in the crate touches them.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::Path;

use llama_cpp_sys_2::{
    gguf_free, gguf_get_data_offset, gguf_get_n_tensors, gguf_get_tensor_offset, gguf_get_tensor_size, gguf_init_from_file,
    gguf_init_params,
};

/// The bytes a GGUF file must have for its header's tensors: the data section's offset plus the
/// end of its furthest tensor. `None` when the header cannot be read as GGUF.
pub fn described_len(path: &Path) -> Option<u64> {
    let c_path = CString::new(path.to_str()?).ok()?;
    let params = gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
    // SAFETY: `c_path` outlives the call; a null result is handled below.
    let ctx = unsafe { gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return None;
    }
    // SAFETY: `ctx` is the live context returned above, each id is below its tensor count, and the
    // context is freed once, after its last use.
    let len = unsafe {
        let tensors = gguf_get_n_tensors(ctx);
        let data_end = (0..tensors).map(|id| gguf_get_tensor_offset(ctx, id) + gguf_get_tensor_size(ctx, id)).max().unwrap_or(0);
        let len = gguf_get_data_offset(ctx) + data_end;
        gguf_free(ctx);
        len
    };
    u64::try_from(len).ok()
}

/// Why the GGUF file at `path` cannot be loaded as it stands, if its header reads but the file is
/// shorter than the tensors it describes.
pub fn truncation(path: &Path) -> Option<String> {
    let needed = described_len(path)?;
    let actual = std::fs::metadata(path).ok()?.len();
    (actual < needed).then(|| {
        format!("{} is cut short: {actual} bytes where its tensors need {needed} (an interrupted download or copy?)", path.display())
    })
}
