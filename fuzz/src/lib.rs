//! The fuzz harnesses of walkie-bridge: one function per cargo-fuzz target,
//! each feeding arbitrary bytes to the parser the daemon runs on untrusted
//! input, the way the daemon calls it.
//!
//! They live in a library rather than in the target files so that the main
//! workspace's `tests/fuzz_regressions.rs` replays seeds and crashers through
//! exactly the same code (it includes these modules by path), without linking
//! libFuzzer. Each function panics only on a real bug: a parser that panics,
//! or a result that contradicts its own input.

pub mod audio;
pub mod config;
pub mod live;
pub mod mqtt;
pub mod mumble;

/// Largest single allocation a fuzz input may cause. Inputs are a few KB
/// (libFuzzer's `-max_len` follows the largest seed), so anything near this is
/// an allocation sized by a length field rather than by the data, the bug
/// class "unbounded allocation". Without a sanitizer libFuzzer cannot see
/// allocations (its `-malloc_limit_mb` needs the sanitizer's malloc hooks), and
/// an untouched `Vec::with_capacity(1 << 40)` never shows up in the RSS either;
/// this allocator catches them at the call.
pub const MAX_ALLOCATION: usize = 64 << 20;

struct CappedAllocator;

fn too_big(size: usize) -> ! {
    // No allocation here: formatting an integer into stderr does not allocate.
    eprintln!(
        "fuzz: allocation of {size} bytes exceeds {MAX_ALLOCATION} (input-sized allocation?)"
    );
    std::process::abort()
}

// SAFETY: forwards to the system allocator unchanged; only refuses (by
// aborting, before any allocation) sizes over the cap.
unsafe impl std::alloc::GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_big(layout.size());
        }
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_big(layout.size());
        }
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            too_big(new_size);
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;
