//! Giving freed memory back to the system. glibc's allocator keeps what a
//! burst freed (10,000 connections closing) inside its arenas, scattered
//! between blocks still in use, so without help a process that once served
//! 10,000 requests at once stays at that size. `malloc_trim(0)` hands every
//! free page back; [`spawn_trimmer`] does it now and then, which costs
//! little when there is nothing to give back.

use std::time::Duration;

/// How often [`spawn_trimmer`]'s task gives free memory back.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Gives every free page of the allocator back to the system; whether any
/// was (always `false` where the allocator is not glibc's).
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only returns free pages;
        // it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A task that calls [`trim`] every `every`, on the blocking pool (a trim
/// walks the arenas: a few milliseconds after a burst).
pub fn spawn_trimmer(every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
}

/// Resident memory of this process, in kB (`None` off Linux).
pub fn resident_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_scattered_between_live_blocks_goes_back() {
        // 256 MB in 4 KB blocks on one thread's arena; keep every 64th, so
        // the free space is fragmented and the heap's top cannot shrink.
        let handle = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8; 4096]).collect();
            let kept: Vec<Vec<u8>> = blocks
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| i % 64 == 0)
                .map(|(_, b)| std::mem::take(b))
                .collect();
            drop(blocks);
            let before = resident_kb().unwrap();
            assert!(trim(), "nothing was given back");
            let after = resident_kb().unwrap();
            drop(kept);
            (before, after)
        });
        let (before, after) = handle.join().unwrap();
        assert!(
            after + 128 * 1024 < before,
            "resident {before} kB before the trim, {after} kB after"
        );
    }
}
