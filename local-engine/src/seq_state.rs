//! A sequence's KV state copied to and from host memory, in buffers the caller owns and reuses.
//!
//! `llama-cpp-2`'s safe `state_seq_get` allocates a fresh buffer for every state. Faulting in a
//! few MB of fresh pages cost 5–10 ms per save on the engine thread here (2.5 MB states of
//! SmolLM2-135M with transparent huge pages; ~1.2 ms without them), against ~0.2 ms for the copy
//! itself, and every admission that saves the slot's old conversation paid it before its prefill.
//! Writing into a buffer freed by an evicted state costs only the copy, so these two calls use
//! llama.cpp's raw state functions; nothing else in the crate is unsafe.
#![allow(unsafe_code)]

use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;

const FLAGS: LlamaStateSeqFlags = LlamaStateSeqFlags::empty();

/// Bytes `seq_id`'s state takes.
pub(crate) fn size(ctx: &LlamaContext, seq_id: i32) -> usize {
    ctx.state_seq_get_size_ext(seq_id, FLAGS)
}

/// Copies `seq_id`'s state into `buffer`, which is resized to the state's size (a reused buffer
/// at least that large keeps its pages); false if llama.cpp did not write the state whole.
pub(crate) fn save(ctx: &LlamaContext, seq_id: i32, buffer: &mut Vec<u8>) -> bool {
    let size = size(ctx, seq_id);
    if buffer.len() >= size {
        buffer.truncate(size);
    } else {
        buffer.reserve_exact(size - buffer.len());
        buffer.resize(size, 0);
    }
    // SAFETY: `buffer` holds `size` initialised bytes, the size llama.cpp just computed for this
    // sequence by the same walk over its cells that writes the state; `ctx` is borrowed across
    // both calls and only this thread drives it, so the cells cannot change in between and
    // llama.cpp writes at most `size` bytes.
    let written = unsafe { ctx.state_seq_get_data_ext(buffer.as_mut_ptr(), seq_id, FLAGS) };
    written == size
}

/// Loads a state written by [`save`] on this context into `seq_id`; false if llama.cpp refused it.
pub(crate) fn restore(ctx: &mut LlamaContext, state: &[u8], seq_id: i32) -> bool {
    // SAFETY: `state` came whole from `save` on this same context (same model, cache layout and
    // flags). llama.cpp reads it through a bounded reader that fails, rather than reads past the
    // end, on a size mismatch, and checks each layer's type and row size before copying.
    unsafe { ctx.state_seq_set_data_ext(state, seq_id, FLAGS) }
}
