//! Synchronous data-parallel training, as PyTorch's `DistributedDataParallel` does it.
//!
//! Every rank holds a whole copy of the network. Training starts from rank 0's
//! parameters (a broadcast); every global mini-batch is cut into one slice per rank
//! ([`share`]); each rank computes the gradient of the *global* mean loss restricted to
//! its slice ([`Network::gradient_of_slice`]); the ranks add their gradients up (one
//! all-reduce of one flat buffer, the loss riding along at its end); and every rank
//! takes the same optimizer step. Dropout masks and augmentation draws depend on the
//! seed, the iteration and the image's place in the global mini-batch, never on the rank,
//! so the run does not depend on how many ranks share it. Every
//! [`Distributed::check_every`] steps the ranks compare a checksum of their parameters
//! and stop with [`crate::TrainError::ReplicasDiverged`] if one differs.
//!
//! What is not synchronised: batch normalisation normalises each rank's slice with that
//! slice's own mean and variance, and its running statistics are those of rank 0's
//! slices (as PyTorch does without `SyncBatchNorm`), so a network with batch norm trains
//! a little differently on 2 ranks than in one process. Networks without it (the book's
//! DeepConvNet) train the same.
//!
//! The collective operations come from a [`Communicator`]: [`ThreadGroup`] runs the
//! ranks as threads of one process (for tests, and for machines without MPI), and the
//! `dl-mpi` crate gives one over MPI, for many processes and machines.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use dl_models::Network;

/// The collective operations data-parallel training needs. Every rank calls each
/// operation in the same order, as MPI requires.
pub trait Communicator {
    /// This rank, `0..size`.
    fn rank(&self) -> usize;
    /// How many ranks there are.
    fn size(&self) -> usize;
    /// Copies `root`'s `buf` into every rank's `buf` (all of the same length).
    fn broadcast(&self, buf: &mut [f32], root: usize);
    /// [`Communicator::broadcast`] of 64-bit floats (accuracies, counts).
    fn broadcast_f64(&self, buf: &mut [f64], root: usize);
    /// Replaces every rank's `buf` by the element-wise sum of all ranks' `buf`s; every
    /// rank gets the same bits.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Every rank's `value`, in rank order.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>;
}

/// The slice of a global mini-batch of `n` samples that `rank` of `size` computes:
/// consecutive, and as even as can be (the lengths differ by at most one). A rank's
/// slice is empty when `n < size`.
pub fn share(n: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    n * rank / size..n * (rank + 1) / size
}

/// Data-parallel settings for [`crate::Trainer::distributed`].
#[derive(Clone, Copy)]
pub struct Distributed<'c> {
    /// The ranks.
    pub comm: &'c dyn Communicator,
    /// Compare the parameters' checksums every this many steps (0: never).
    pub check_every: usize,
}

impl<'c> Distributed<'c> {
    /// Data-parallel training over `comm`, the parameters compared every 100 steps.
    pub fn new(comm: &'c dyn Communicator) -> Self {
        Self { comm, check_every: 100 }
    }
}

impl std::fmt::Debug for Distributed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .field("check_every", &self.check_every)
            .finish()
    }
}

/// Copies rank 0's parameters and buffers to every rank.
pub fn broadcast_network(comm: &dyn Communicator, network: &mut Network) {
    let mut flat = Vec::new();
    network.visit_state_mut(|t| flat.extend(t.iter().copied()));
    comm.broadcast(&mut flat, 0);
    let mut at = 0;
    network.visit_state_mut(|t| {
        for v in t.iter_mut() {
            *v = flat[at];
            at += 1;
        }
    });
}

/// A checksum of the network's parameters and buffers (FNV-1a over their bits): equal
/// on every rank while the replicas agree.
pub fn checksum(network: &mut Network) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    network.visit_state_mut(|t| {
        for v in t.iter() {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    });
    h
}

/// Ranks as threads of one process, sharing memory: the same semantics as MPI, for tests
/// and for trying data-parallel training without MPI. [`ThreadGroup::run`] starts them.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Gate,
    f32s: Mutex<Vec<Vec<f32>>>,
    f64s: Mutex<Vec<Vec<f64>>>,
    u64s: Mutex<Vec<u64>>,
}

/// A barrier that a dying rank breaks: the ranks waiting at it, and those that come
/// later, panic instead of waiting for ever.
struct Gate {
    size: usize,
    /// (ranks waiting, generation, broken)
    state: Mutex<(usize, u64, bool)>,
    turned: Condvar,
    /// The rank that broke it first.
    first: Mutex<Option<usize>>,
}

impl Gate {
    fn new(size: usize) -> Self {
        Self {
            size,
            state: Mutex::new((0, 0, false)),
            turned: Condvar::new(),
            first: Mutex::new(None),
        }
    }

    fn wait(&self) {
        let broken = || panic!("another rank of the ThreadGroup panicked");
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.2 {
            broken();
        }
        st.0 += 1;
        if st.0 == self.size {
            st.0 = 0;
            st.1 += 1;
            self.turned.notify_all();
            return;
        }
        let generation = st.1;
        while st.1 == generation && !st.2 {
            st = self.turned.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.1 == generation {
            drop(st);
            broken();
        }
    }

    fn breaks(&self, rank: usize) {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(rank);
        self.state.lock().unwrap_or_else(|e| e.into_inner()).2 = true;
        self.turned.notify_all();
    }
}

impl ThreadGroup {
    /// Runs `f` on `size` ranks, each on its own thread with its own
    /// [`ThreadGroup`], and returns their results in rank order. A rank that panics
    /// ends the others at their next collective (they panic too, rather than wait for
    /// it for ever), and `run` panics with the first rank's panic.
    pub fn run<R: Send>(size: usize, f: impl Fn(&ThreadGroup) -> R + Sync) -> Vec<R> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            size,
            barrier: Gate::new(size),
            f32s: Mutex::new(vec![Vec::new(); size]),
            f64s: Mutex::new(vec![Vec::new(); size]),
            u64s: Mutex::new(vec![0; size]),
        });
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..size)
                .map(|rank| {
                    let group = ThreadGroup {
                        rank,
                        shared: Arc::clone(&shared),
                    };
                    let f = &f;
                    s.spawn(move || {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&group)));
                        if r.is_err() {
                            group.shared.barrier.breaks(rank);
                        }
                        r
                    })
                })
                .collect();
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect();
            // the rank that panicked first (the others panicked because it did)
            let first = *shared.barrier.first.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::with_capacity(size);
            for (rank, r) in results.into_iter().enumerate() {
                match r {
                    Ok(v) => out.push(v),
                    Err(e) if Some(rank) == first => std::panic::resume_unwind(e),
                    Err(_) => {}
                }
            }
            out
        })
    }
}

impl ThreadGroup {
    /// `root` leaves its `buf` in its slot of `slots`; the others copy it.
    fn broadcast_through<T: Copy>(&self, slots: &Mutex<Vec<Vec<T>>>, buf: &mut [T], root: usize) {
        if self.rank == root {
            slots.lock().expect("rank panicked")[root] = buf.to_vec();
        }
        self.shared.barrier.wait();
        if self.rank != root {
            buf.copy_from_slice(&slots.lock().expect("rank panicked")[root]);
        }
        self.shared.barrier.wait();
    }
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) {
        self.broadcast_through(&self.shared.f32s, buf, root);
    }

    fn broadcast_f64(&self, buf: &mut [f64], root: usize) {
        self.broadcast_through(&self.shared.f64s, buf, root);
    }

    /// Sums in rank order: `((r0 + r1) + r2) + ...`, the same bits on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let sh = &self.shared;
        sh.f32s.lock().expect("rank panicked")[self.rank] = buf.to_vec();
        sh.barrier.wait();
        {
            let all = sh.f32s.lock().expect("rank panicked");
            buf.copy_from_slice(&all[0]);
            for other in &all[1..] {
                buf.iter_mut().zip(other).for_each(|(b, o)| *b += o);
            }
        }
        sh.barrier.wait();
    }

    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let sh = &self.shared;
        sh.u64s.lock().expect("rank panicked")[self.rank] = value;
        sh.barrier.wait();
        let out = sh.u64s.lock().expect("rank panicked").clone();
        sh.barrier.wait();
        out
    }
}
