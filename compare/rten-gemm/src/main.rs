//! `cargo run --release` here: rten-gemm's u8 x i8 -> i32 GEMM (its default kernel, on
//! its own threads) against dl-tensor's `QConv` (one thread) on DeepConvNet's
//! convolution shapes, one image; rten is handed the lowered matrix ready-made.
use dl_tensor::int8::{Int8Kernel, Int8Scratch, QConv};
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions};
use rten_tensor::NdTensorView;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); v[v.len() / 2] }

fn main() {
    let layers = [("conv1", 1usize, 28usize, 16usize, 1usize), ("conv2", 16, 28, 16, 1), ("conv3", 16, 14, 32, 1),
        ("conv4", 32, 14, 32, 2), ("conv5", 32, 8, 64, 1), ("conv6", 64, 8, 64, 1)];
    let exec = GemmExecutor::<u8, i8, i32>::default();
    println!("rten kernel may saturate: {}", exec.may_saturate());
    for &(name, c, hw, f, pad) in &layers {
        let k = c * 9;
        let out = hw + 2 * pad - 2;
        let m = out * out;
        let a: Vec<u8> = (0..m * k).map(|i| (i % 251) as u8).collect();
        let b: Vec<i8> = (0..k * f).map(|i| ((i * 7) % 255) as u8 as i8).collect();
        let av = NdTensorView::from_data([m, k], &a[..]);
        let bv = NdTensorView::from_data([k, f], &b[..]);
        let packed = exec.prepack_b(bv);
        let mut c_out = vec![0i32; m * f];
        let mut ts = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            exec.gemm(&mut c_out, GemmInputA::Unpacked(av), GemmInputB::Packed(&packed), GemmOptions::default()).unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let rten = median(ts);
        let w: Vec<i8> = (0..f * k).map(|i| ((i * 7) % 255) as u8 as i8).collect();
        let conv = QConv::new(w, [f, c, 3, 3], 1, pad, vec![0; f], 0).unwrap();
        let x: Vec<u8> = (0..hw * hw * c).map(|i| (i % 251) as u8).collect();
        let mut o = vec![0i32; m * f];
        let mut s = Int8Scratch::default();
        let mut ts = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            conv.accumulate(&x, hw, hw, &mut o, &mut s, Int8Kernel::Avx512Vnni).unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let ours = median(ts);
        println!("{name}: M={m} K={k} N={f}: rten-gemm {rten:.1} us (lowered matrix given), dl-tensor QConv {ours:.1} us (from the image) -> {:.2}x", rten / ours);
    }
}
