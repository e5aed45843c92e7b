//! `retain_freed_memory`: a block freed and allocated again is served from pages the
//! process already has. Its own test binary, because the settings are process-wide.

/// Minor page faults of the calling thread so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> i64 {
    // SAFETY: `getrusage` writes one `rusage`, which `zeroed` makes valid to pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage.ru_minflt
    }
}

/// Allocates 16 MiB, writes one byte per page, frees it; returns the page faults that
/// took. 16 MiB is a layer's output at a batch of a few hundred (a 16-channel 28x28
/// output is 5 MB at batch 100), and above glibc's default threshold for serving a block
/// by `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults_of_a_16_mib_block() -> i64 {
    let before = minor_faults();
    let mut block = vec![0u8; 16 << 20];
    for byte in block.iter_mut().step_by(4096) {
        *byte = 1;
    }
    std::hint::black_box(&block);
    drop(block);
    minor_faults() - before
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_blocks_are_reused_and_heaps_grow_in_large_steps() {
    assert!(dl_tensor::retain_freed_memory(), "mallopt refused a setting");
    // A new thread's first allocation makes its own arena, a heap of the request plus
    // the top pad (capped at glibc's 64 MiB per heap); by default about 132 KiB.
    // (First in the test: a later thread could take over a finished thread's arena.)
    // SAFETY: `mallinfo2` only reads the allocator's counters.
    let before = unsafe { libc::mallinfo2() }.arena;
    let grown = std::thread::spawn(move || {
        std::hint::black_box(vec![1u8; 4096]);
        // SAFETY: as above.
        unsafe { libc::mallinfo2() }.arena.saturating_sub(before)
    })
    .join()
    .unwrap();
    assert!(
        grown >= 32 << 20,
        "a new arena took only {grown} bytes: the 64 MiB top pad is not set"
    );
    let first = faults_of_a_16_mib_block();
    let second = faults_of_a_16_mib_block();
    // The first block faults in its 4,096 pages; the second lands on them. With glibc's
    // defaults the second is a new heap extension (the first was unmapped) and faults
    // 4,096 times again.
    assert!(
        first >= 2048,
        "the first block faulted {first} times: the test measures nothing"
    );
    assert!(
        second < 256,
        "the reused block faulted {second} times (the first {first})"
    );
}

#[test]
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn elsewhere_nothing_is_set() {
    assert!(!dl_tensor::retain_freed_memory());
}
