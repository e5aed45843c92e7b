//! The engines' passes on a global pool of one thread (this test binary is a process of
//! its own, so its global pool and its allocator can be set).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use dl_infer::{BinaryNetwork, Inference, Precision};
use dl_layers::Tensor;
use dl_models::ModelConfig;

/// The system allocator, counting the allocations of [`WATCHED`] bytes made on a thread
/// that [`CALLER`] marks (outside rayon's pool).
struct Watching;

thread_local! {
    /// Whether this thread's allocations are counted.
    static CALLER: Cell<bool> = const { Cell::new(false) };
}

/// The size of the copy of a batch an engine's pass makes first: 5 images of 1 x 28 x
/// 28 as `f32`, which no other allocation of these passes on the calling thread has.
const WATCHED: usize = 5 * 28 * 28 * 4;

static ON_THE_CALLER: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is the system allocator's, with its arguments unchanged.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == WATCHED && CALLER.with(Cell::get) {
            ON_THE_CALLER.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as the trait's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the trait's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Called from a thread outside rayon's global pool of one thread, the engines' passes
/// run on that thread (`dl_tensor::on_pool`): the copy of the batch each pass makes
/// first is made there, not on the caller's thread.
#[test]
fn on_one_thread_the_passes_run_on_the_pools_thread() {
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().unwrap();
    let x = Tensor::from_shape_fn(vec![5, 1, 28, 28], |i| ((i[2] * 28 + i[3]) % 7) as f32 / 7.0);
    let outside = |pass: &(dyn Fn(&Tensor) + Sync)| {
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(rayon::current_thread_index(), None);
                CALLER.with(|c| c.set(true));
                let before = ON_THE_CALLER.load(Ordering::Relaxed);
                pass(&x);
                ON_THE_CALLER.load(Ordering::Relaxed) - before
            })
            .join()
            .unwrap()
        })
    };
    // the probe sees the copy when the pass runs where it is called
    assert_eq!(outside(&|x| drop(std::hint::black_box(x.to_owned()))), 1);
    let deep = ModelConfig::default_for("DeepConvNet").unwrap().build(1).unwrap();
    let f32_engine = Inference::new(deep.root(), Precision::F32).unwrap();
    assert_eq!(outside(&|x| drop(f32_engine.predict(x).unwrap())), 0, "f32");
    let binary = ModelConfig::default_for("BinaryConvNet").unwrap().build(1).unwrap();
    let packed = BinaryNetwork::new(binary.root(), (1, 28, 28)).unwrap();
    assert_eq!(outside(&|x| drop(packed.predict(x).unwrap())), 0, "binary");
}
