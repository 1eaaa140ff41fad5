//! The binary's allocator (a module of `main.rs`, not of the library, so
//! that tests and embedders of the library keep their own).

use std::alloc::{GlobalAlloc, Layout};

/// mimalloc for the many small blocks, a mapping of its own for each big
/// one. mimalloc instead of glibc's malloc: records are allocated on
/// request threads and freed on others, which glibc serves with arena locks
/// and consolidation (a quarter of SubmitBatch's CPU in a profile). But
/// mimalloc keeps the pages of freed big blocks (a seal's sorted keys, a
/// growing dedupe table, a reader's record index, a 2.5 MB request) for
/// reuse, so that every such peak stayed resident: under 60 s of Emit with
/// unique ids the peak RSS was 52 to 70 MiB for 7 to 24 MB of live heap.
/// Blocks of [`OWN_MAPPING`] bytes and more are rare (none per Emit or
/// SubmitBatch call of a usual size) and go straight to `mmap`, so their
/// memory is returned the moment they are freed (35 MiB in the same run).
pub struct Allocator;

/// The size from which a block gets its own mapping.
const OWN_MAPPING: usize = 256 * 1024;
/// Mappings are aligned to pages, which are at least this big.
const PAGE: usize = 4096;

fn own_mapping(layout: Layout) -> bool {
    layout.size() >= OWN_MAPPING && layout.align() <= PAGE
}

// SAFETY: every block is freed by the allocator that made it: the layout
// given back to `dealloc` and `realloc` is the one it was allocated with,
// so `own_mapping` answers the same for it.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if own_mapping(layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if own_mapping(layout) {
            // Fresh anonymous pages are zero.
            map(layout.size())
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if own_mapping(layout) {
            // SAFETY: `ptr` is a mapping of this size made by `map`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s contract: `new_size` is valid for this align.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (own_mapping(layout), own_mapping(new)) {
            // SAFETY: the caller's contract, passed on.
            (false, false) => unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: `ptr` is a mapping of `layout.size()` made by
                // `map`; the kernel moves its pages rather than copying.
                let moved = unsafe {
                    libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if moved == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    moved.cast()
                }
            }
            _ => {
                // SAFETY: the new block is made by this allocator; the
                // bytes copied are in both blocks; the old block is freed
                // with its own layout.
                unsafe {
                    let to = self.alloc(new);
                    if !to.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    to
                }
            }
        }
    }
}

/// A private anonymous mapping of `size` bytes, or null.
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new anonymous mapping aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    /// Whether every page of `[p, p + len)` is mapped.
    fn mapped(p: *const u8, len: usize) -> bool {
        let pages = len.div_ceil(super::PAGE);
        let mut residency = vec![0u8; pages];
        // SAFETY: `mincore` only reads the page tables; `residency` holds a
        // byte per page. A page-aligned `p` is what it accepts.
        unsafe { libc::mincore(p as *mut libc::c_void, len, residency.as_mut_ptr()) == 0 }
    }

    /// One test, so that no other test's blocks are mapped meanwhile.
    #[test]
    fn big_blocks_are_mappings_of_their_own_returned_when_freed() {
        let v = vec![7u8; 3 << 20];
        let (p, len) = (v.as_ptr(), v.len());
        assert!(mapped(p, len));
        drop(v);
        assert!(!mapped(p, len), "a freed big block is no longer mapped");

        // Fresh mappings are zero.
        let zeroed = vec![0u8; super::OWN_MAPPING * 2];
        assert!(zeroed.iter().all(|&b| b == 0));
        // A vector grows from mimalloc's blocks into a mapping (which then
        // moves as it grows) and shrinks back, keeping its bytes.
        let mut v: Vec<u32> = Vec::new();
        for i in 0..(1u32 << 20) {
            v.push(i);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x as usize == i));
        v.truncate(1000);
        v.shrink_to_fit();
        assert!(v.iter().enumerate().all(|(i, &x)| x as usize == i));
        // Alignment beyond a page is mimalloc's.
        let layout = std::alloc::Layout::from_size_align(1 << 20, 1 << 16).unwrap();
        // SAFETY: a non-zero size, freed with the same layout.
        unsafe {
            let p = std::alloc::alloc(layout);
            assert!(!p.is_null() && (p as usize).is_multiple_of(1 << 16));
            std::alloc::dealloc(p, layout);
        }
    }
}
