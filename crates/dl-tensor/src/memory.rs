/// Makes the C allocator keep freed memory for the next allocation instead of handing it
/// back to the operating system (glibc on Linux; elsewhere a no-op that returns `false`).
/// Returns whether the settings took.
///
/// A training step allocates every layer's output and gradient afresh, megabytes each
/// (a batch of 100 through a 16-channel 28x28 convolution is 5 MB), and frees them by
/// the next step. glibc serves such blocks with `mmap` and unmaps them on free, or trims
/// the heap's top once the free space there passes a threshold, so the next step touches
/// new pages: a page fault and a zeroed page for every 4 KiB written. In `cargo xtask
/// bench` on DeepConvNet that was about a tenth of the CPU time, spent in the kernel,
/// most of it in the batch-1000 inference passes (a training run faults less: 3% of its
/// CPU time). This sets the three thresholds to values such a process wants:
///
/// * `M_MMAP_THRESHOLD` 32 MiB (glibc's ceiling), and fixed: blocks below it come from
///   the heap, which is reused;
/// * `M_TRIM_THRESHOLD` 2 GiB: the heap is not shrunk while it has less free space;
/// * `M_TOP_PAD` 64 MiB: the heap grows in large steps.
///
/// The resident memory then stays at its peak instead of rising and falling with every
/// step; the peak is not raised. The settings are process-wide, so the library
/// never changes them itself: call this once at the start of a program that trains or
/// serves (`cargo xtask` does; docs/PERFORMANCE.md has the measurement).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MIB: libc::c_int = 1 << 20;
        let settings = [
            (libc::M_MMAP_THRESHOLD, 32 * MIB),
            (libc::M_TRIM_THRESHOLD, libc::c_int::MAX),
            (libc::M_TOP_PAD, 64 * MIB),
        ];
        // SAFETY: `mallopt` only changes the allocator's parameters, under its own lock;
        // every value is within the range glibc documents for its parameter.
        settings
            .iter()
            .all(|&(param, value)| unsafe { libc::mallopt(param, value) } == 1)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
