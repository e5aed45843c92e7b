//! Where the work of a call runs.

/// Runs `f` where its parallel loops cost least: on a pool of one thread, on that
/// thread; otherwise on the calling thread.
///
/// A parallel loop started from a thread outside rayon's pool is handed to a pool
/// thread and waited for: a wake-up and a sleep per loop. On a pool of one thread the
/// caller only waits, so `f` runs on the pool's thread itself (the caller waiting once),
/// where every loop runs inline; for networks of many small layers that is a large part
/// of a step (docs/PERFORMANCE.md, "Work started on a thread of the pool"). With more
/// threads the idle ones must be woken either way, and starting the loops from inside
/// the pool left the second core idle for part of a step in the runs measured there, so
/// `f` runs where it is called. `Network`'s forward and backward passes, the passes of
/// `dl-infer`'s float and binary engines and `cargo xtask`'s commands run through it.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if hands_over(rayon::current_num_threads(), rayon::current_thread_index().is_some()) {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Whether [`on_pool`] moves its work onto the pool: only from outside it, and only to a
/// pool of one thread.
fn hands_over(threads: usize, inside: bool) -> bool {
    threads == 1 && !inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_for_a_pool_of_one_thread_from_outside_it_moves() {
        assert!(hands_over(1, false));
        assert!(!hands_over(1, true));
        assert!(!hands_over(2, false));
        assert!(!hands_over(4, true));
    }

    /// Inside a pool `f` runs on the calling thread, whatever the pool's size, and its
    /// value comes back. (From outside, on the global pool of one thread:
    /// `tests/one_thread.rs`, a process of its own.)
    #[test]
    fn inside_a_pool_the_work_stays_on_the_calling_thread() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (caller, ran) = pool.install(|| (rayon::current_thread_index(), on_pool(rayon::current_thread_index)));
            assert!(caller.is_some());
            assert_eq!(ran, caller);
        }
        assert_eq!(on_pool(|| 6 * 7), 42);
    }
}
