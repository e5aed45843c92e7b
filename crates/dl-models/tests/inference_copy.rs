//! `Network::clone_for_inference`: a copy of a trained network that evaluates as the
//! network does, bit for bit, and holds nothing a training step left behind. What a
//! copy allocates is counted by this binary's allocator, on the copying thread only,
//! so the one test here needs no other test's allocations kept out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dl_layers::gradcheck::random_input;
use dl_layers::{Labels, Tensor};
use dl_models::{build, Network, MODEL_KINDS};

/// The system allocator, adding up the bytes asked for on a thread while it counts.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call goes to the system allocator unchanged; the counting touches only
// thread-local cells, which allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            BYTES.with(|b| b.set(b.get() + layout.size()));
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f()`'s value and the bytes it allocated on this thread.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    BYTES.with(|b| b.set(0));
    COUNTING.with(|c| c.set(true));
    let value = f();
    COUNTING.with(|c| c.set(false));
    (value, BYTES.with(Cell::get))
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.iter().map(|v| v.to_bits()).collect()
}

fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn a_copy_for_inference_evaluates_as_the_network_and_keeps_no_training_state() {
    let n = 8;
    let x = random_input(&[n, 1, 28, 28], 0.0, 3);
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % 10).collect();
    let other = random_input(&[5, 1, 28, 28], 0.0, 4);
    for kind in MODEL_KINDS {
        let fresh = build(kind, None, 1).unwrap();
        let mut trained = build(kind, None, 1).unwrap();
        one_thread(|| trained.gradient(x.clone(), Labels::Indices(&labels))).unwrap();
        // what a training step leaves: at least the first layer's input
        let (_, untrained_copy) = allocated_by(|| fresh.clone());
        let (_, full_copy) = allocated_by(|| trained.clone());
        assert!(
            full_copy >= untrained_copy + x.len() * 4,
            "{kind}: a copy of the trained network allocates {full_copy} bytes, of the untrained {untrained_copy}"
        );
        // the copies for inference of both allocate the same: parameters, gradients,
        // buffers and names
        let (_, fresh_bytes) = allocated_by(|| fresh.clone_for_inference());
        let (mut copy, copy_bytes) = allocated_by(|| trained.clone_for_inference());
        assert_eq!(
            copy_bytes, fresh_bytes,
            "{kind}: the copy keeps a training step's state"
        );
        assert_eq!(copy.kind(), trained.kind());
        assert_eq!(copy.metadata(), trained.metadata());
        let saved = |net: &Network| net.params_to_bytes();
        assert_eq!(saved(&copy), saved(&trained), "{kind}: parameters and buffers");
        // the same scores, and a training step on it goes as on the network
        let want = one_thread(|| trained.predict(other.clone(), false)).unwrap();
        let got = one_thread(|| copy.predict(other.clone(), false)).unwrap();
        assert_eq!(bits(&got), bits(&want), "{kind}: evaluation");
        let mut full = trained.clone();
        let want = one_thread(|| full.gradient(x.clone(), Labels::Indices(&labels))).unwrap();
        let got = one_thread(|| copy.gradient(x.clone(), Labels::Indices(&labels))).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "{kind}: loss");
        for ((name, g), (_, w)) in copy.grads().into_iter().zip(full.grads()) {
            assert_eq!(bits(g), bits(w), "{kind}: gradient of {name}");
        }
    }
}
