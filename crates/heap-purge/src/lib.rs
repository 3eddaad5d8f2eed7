//! Returns the allocator's freed pages to the OS on request. The controller's library has
//! no `unsafe` code; this crate holds the one foreign call it needs, mimalloc's
//! `mi_collect`, behind a safe function.
//!
//! mimalloc returns a freed page to the OS a while after the free (`purge_delay`, 1 s in
//! v3), and only when some thread next frees or takes memory: a thread that frees a large
//! structure and then sleeps (the route-table builder after a build) leaves those pages
//! resident until its next job. Calling [`purge`] there returns them at once.

/// Frees what the calling thread's heap holds unused and purges every arena's freed
/// ranges now. Walks the calling thread's heap: call it off latency-sensitive paths.
/// Harmless when mimalloc is not the global allocator (it then holds next to nothing).
pub fn purge() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time;
    // it only releases memory no allocation refers to.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    fn rss_mib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        kib / 1024
    }

    #[test]
    fn freed_pages_leave_at_once_and_live_allocations_stay_intact() {
        let kept: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 64 * 1024]).collect();
        let freed: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 * 1024]).collect();
        let with = rss_mib();
        drop(freed);
        super::purge();
        let after = rss_mib();
        assert!(after + 32 <= with, "64 MiB freed, RSS {with} -> {after} MiB");
        assert!(kept.iter().enumerate().all(|(i, v)| v.iter().all(|b| *b == i as u8)));
    }
}
