//! Times one convolution layer per algorithm (`ConvAlgo::Lowered`, `Direct`, `Winograd`):
//! the forward pass, the input gradient and the filter gradient of a batch, each the
//! median of nine runs, the algorithms in alternation. The numbers behind
//! `WinogradConv::pays`, `WinogradConv::gradient_pays_on` and `DirectConv::pays`.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p dl-tensor --example conv_shapes            # ResNet-20's shapes
//! RAYON_NUM_THREADS=1 cargo run --release -p dl-tensor --example conv_shapes -- 16,28,32,1,3 64,7,64,1,3
//! ```
//!
//! A shape is `C,HW,FN,STRIDE,K`: `C` channels of `HW x HW`, `FN` filters of `K x K`,
//! padding `K / 2`.

use std::time::Instant;

use dl_tensor::{flush_denormals_to_zero, ConvAlgo, ConvGeometry, ConvPlan};

/// ResNet-20's convolutions after the first: the three stages and the two 3x3 and 1x1
/// stride-2 layers between them.
const RESNET: [(usize, usize, usize, usize, usize); 7] = [
    (16, 28, 16, 1, 3),
    (32, 14, 32, 1, 3),
    (64, 7, 64, 1, 3),
    (16, 28, 32, 2, 3),
    (32, 14, 64, 2, 3),
    (16, 28, 32, 2, 1),
    (32, 14, 64, 2, 1),
];

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1e3
}

fn parse(arg: &str) -> Option<(usize, usize, usize, usize, usize)> {
    let v: Vec<usize> = arg.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    match v[..] {
        [c, hw, f, s, k] => Some((c, hw, f, s, k)),
        _ => None,
    }
}

fn main() {
    flush_denormals_to_zero();
    rayon::broadcast(|_| flush_denormals_to_zero());
    let shapes: Vec<_> = std::env::args().skip(1).map(|a| parse(&a)).collect();
    let shapes: Vec<_> = if shapes.is_empty() {
        RESNET.to_vec()
    } else if let Some(s) = shapes.into_iter().collect::<Option<Vec<_>>>() {
        s
    } else {
        eprintln!("a shape is C,HW,FN,STRIDE,K (five numbers)");
        std::process::exit(2);
    };
    let n = 100;
    println!("batch {n}, {} threads, medians of 9 (ms)", rayon::current_num_threads());
    println!(
        "{:<22} {:<9} {:>8} {:>8} {:>8}",
        "C HWxHW -> FN, s, k", "algo", "forward", "dx", "dW"
    );
    let algos = [ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd];
    for (c, hw, f, stride, k) in shapes {
        let Ok(g) = ConvGeometry::new(c, hw, hw, k, k, stride, k / 2) else {
            eprintln!("{c},{hw},{f},{stride},{k}: not a convolution");
            std::process::exit(2);
        };
        let w: Vec<f32> = (0..f * c * k * k)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..n * c * hw * hw)
            .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let b = vec![0.0f32; f];
        let mut times = vec![[vec![], vec![], vec![]]; algos.len()];
        for _ in 0..9 {
            for (t, &algo) in times.iter_mut().zip(&algos) {
                let plan = ConvPlan::new(g, f, algo);
                let s = Instant::now();
                let (y, saved) = plan.forward(&w, Some(&b), &x);
                t[0].push(s.elapsed().as_secs_f64());
                let s = Instant::now();
                let dx = plan.backward(&w, &saved, &x, &y, true, None, None);
                t[1].push(s.elapsed().as_secs_f64());
                let (mut dw, mut db) = (vec![0.0f32; w.len()], vec![0.0f32; f]);
                let s = Instant::now();
                let none = plan.backward(&w, &saved, &x, &y, false, Some(&mut dw), Some(&mut db));
                t[2].push(s.elapsed().as_secs_f64());
                std::hint::black_box((dx, none, dw, db));
            }
        }
        for (t, algo) in times.into_iter().zip(algos) {
            let [fw, dx, dw] = t.map(median_ms);
            let shape = format!("{c} {hw}x{hw} -> {f}, s{stride}, {k}x{k}");
            println!("{shape:<22} {:<9} {fw:>8.2} {dx:>8.2} {dw:>8.2}", format!("{algo:?}"));
        }
    }
}
