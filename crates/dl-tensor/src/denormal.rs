/// Sets flush-to-zero and denormals-are-zero on the calling thread (x86-64 only; a no-op
/// elsewhere), so that tiny numbers that build up in optimizer moments and gradients do
/// not fall onto the slow denormal path. Call it on every compute thread (the
/// `dl-train` Trainer does, for the rayon pool it uses).
pub fn flush_denormals_to_zero() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr only read and write the MXCSR control register of this
        // thread; setting FTZ (bit 15) and DAZ (bit 6) changes no memory and no
        // exception masks.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn denormals_flush_to_zero_after_call() {
        std::thread::spawn(|| {
            super::flush_denormals_to_zero();
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            let d = std::hint::black_box(tiny) / std::hint::black_box(4.0f32);
            if cfg!(target_arch = "x86_64") {
                assert_eq!(d, 0.0);
            }
        })
        .join()
        .unwrap();
    }
}
