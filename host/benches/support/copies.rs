//! Each process of a latency harness runs from a copy of its binary of its own.
//!
//! Processes that run one file share its code pages in memory, and so in the CPU's caches.
//! With calls interleaved path by path, one process's call warms the code that another runs
//! next. Several paths run the toolgate binary: the gateway, its twins, and the echo upstream
//! of every path. From one file, the gateway found its code warm where nginx (and any other
//! build, as an A/B path) did not: an A/B of a build against a byte-identical copy of itself
//! measured the copy 20–24 µs slower on the HTTP echo path (2026-12-02). A copy has pages of
//! its own, so every path is as cold as nginx's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A new copy of `binary` in `dir`, for one process.
pub fn own_copy(binary: impl AsRef<Path>, dir: &Path) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let binary = binary.as_ref();
    let name = binary.file_name().expect("a binary's path names a file");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let copy = dir.join(format!("{}.{n}", name.to_string_lossy()));
    std::fs::copy(binary, &copy).expect("a copy of a binary, for one process");
    copy
}
