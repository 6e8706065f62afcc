//! A sequence's KV state copied to and from host memory, in buffers the caller owns and reuses.
//!
//! `llama-cpp-2`'s safe `state_seq_get` allocates a fresh, zeroed buffer for every state from the
//! global allocator. mimalloc's arenas are marked for transparent huge pages, and the kernel then
//! zeroes (and, with `defrag = madvise`, may compact for) whole 2 MB pages on first touch: 5–10 ms
//! per 2.5 MB state of SmolLM2-135M on the engine thread here, against 0.1–0.2 ms for copying the
//! state itself, and every admission that saves the slot's old conversation paid it before its
//! prefill. So states live in [`StateBuffer`]s: from the system allocator (ordinary pages: ~1 ms
//! for a fresh one), written without zeroing first, and reused once the cache is full (a new
//! state goes into the buffer of the one it evicts: only the copy). Nothing else in the crate
//! is unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;

const FLAGS: LlamaStateSeqFlags = LlamaStateSeqFlags::empty();
const ALIGN: usize = 64;

/// Bytes owned by the system allocator; the first `len` of them hold a state llama.cpp wrote.
pub(crate) struct StateBuffer {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the buffer owns its allocation outright (no aliasing pointers exist), like a `Vec<u8>`.
unsafe impl Send for StateBuffer {}

impl StateBuffer {
    /// A buffer with no allocation.
    pub(crate) const fn empty() -> Self {
        Self { ptr: NonNull::dangling(), len: 0, capacity: 0 }
    }

    fn with_capacity(capacity: usize) -> Self {
        if capacity == 0 {
            return Self::empty();
        }
        let layout = Layout::from_size_align(capacity, ALIGN).expect("a state size fits a layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { System.alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        Self { ptr, len: 0, capacity }
    }

    /// Bytes allocated (what the buffer costs in memory).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The state written last.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `capacity >= len` bytes (or dangling with `len == 0`), and
        // the first `len` were written by llama.cpp before `len` was set.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for StateBuffer {
    fn drop(&mut self) {
        if self.capacity > 0 {
            let layout = Layout::from_size_align(self.capacity, ALIGN).expect("allocated with this layout");
            // SAFETY: allocated by `System` with this very layout in `with_capacity`.
            unsafe { System.dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// Bytes `seq_id`'s state takes.
pub(crate) fn size(ctx: &LlamaContext, seq_id: i32) -> usize {
    ctx.state_seq_get_size_ext(seq_id, FLAGS)
}

/// Copies `seq_id`'s state into `buffer`, replacing it by a fresh one only if it is too small;
/// false if llama.cpp did not write the state whole (the buffer then holds no state).
pub(crate) fn save(ctx: &LlamaContext, seq_id: i32, buffer: &mut StateBuffer) -> bool {
    let size = size(ctx, seq_id);
    if buffer.capacity < size {
        *buffer = StateBuffer::with_capacity(size);
    }
    buffer.len = 0;
    // SAFETY: the buffer has room for `size` bytes, the size llama.cpp just computed for this
    // sequence by the same walk over its cells that writes the state; `ctx` is borrowed across
    // both calls and only this thread drives it, so the cells cannot change in between and
    // llama.cpp writes at most `size` bytes (it only writes: nothing is read before written).
    let written = unsafe { ctx.state_seq_get_data_ext(buffer.ptr.as_ptr(), seq_id, FLAGS) };
    if written != size {
        return false;
    }
    buffer.len = size;
    true
}

/// Loads a state written by [`save`] on this context into `seq_id`; false if llama.cpp refused it.
pub(crate) fn restore(ctx: &mut LlamaContext, state: &StateBuffer, seq_id: i32) -> bool {
    // SAFETY: `state` came whole from `save` on this same context (same model, cache layout and
    // flags). llama.cpp reads it through a bounded reader that fails, rather than reads past the
    // end, on a size mismatch, and checks each layer's type and row size before copying.
    unsafe { ctx.state_seq_set_data_ext(state.as_slice(), seq_id, FLAGS) }
}

#[cfg(test)]
mod tests {
    use super::StateBuffer;

    #[test]
    fn buffers_allocate_only_when_asked_and_start_empty() {
        let empty = StateBuffer::empty();
        assert_eq!((empty.capacity(), empty.as_slice().len()), (0, 0));
        let buffer = StateBuffer::with_capacity(1 << 20);
        assert_eq!(buffer.capacity(), 1 << 20);
        assert!(buffer.as_slice().is_empty(), "nothing is readable before a state is written");
        assert_eq!(buffer.ptr.as_ptr() as usize % super::ALIGN, 0);
    }
}
