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
    use std::hint::black_box;

    /// `MIN_POSITIVE / 4`: normal inputs, a denormal result (flush-to-zero makes it 0),
    /// and `2^-149 * 2^30`: a denormal input, a normal result (denormals-are-zero makes it
    /// 0). Compared by their bits: with denormals-are-zero a comparison would read a
    /// denormal as 0 too.
    fn results() -> (u32, u32) {
        let quarter = black_box(f32::MIN_POSITIVE) / black_box(4.0f32);
        let scaled = black_box(f32::from_bits(1)) * black_box(2.0f32.powi(30));
        (black_box(quarter).to_bits(), black_box(scaled).to_bits())
    }

    #[test]
    fn denormals_flush_to_zero_after_call() {
        std::thread::spawn(|| {
            let before = results();
            super::flush_denormals_to_zero();
            let after = results();
            assert_eq!(
                before,
                ((f32::MIN_POSITIVE / 4.0).to_bits(), 2.0f32.powi(-119).to_bits())
            );
            if cfg!(target_arch = "x86_64") {
                assert_eq!(after, (0, 0), "flush-to-zero, then denormals-are-zero");
            } else {
                assert_eq!(after, before);
            }
        })
        .join()
        .unwrap();
    }
}
