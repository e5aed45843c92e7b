//! # dl-mpi
//!
//! Data-parallel training of dlfs networks over MPI, the engine clusters already run:
//! [`Mpi`] is a [`Communicator`] for [`dl_train::Trainer::distributed`], so the same
//! training loop that runs on threads ([`dl_train::ThreadGroup`]) runs on many processes
//! and many machines, started by `mpirun`.
//!
//! The binding (the `mpi` crate over the system's MPI library) sits behind the cargo
//! feature `mpi`, because it needs an MPI library and libclang to build (Debian:
//! `libopenmpi-dev openmpi-bin libclang-dev`). Without the feature the crate still
//! builds, and [`Mpi::init`] returns [`MpiError::NotBuilt`].
//!
//! ```no_run
//! use dl_data::Mnist;
//! use dl_models::{DeepConvNet, DeepConvNetConfig};
//! use dl_train::{Distributed, Trainer, TrainerConfig};
//!
//! // under `mpirun -np 2 ...`: every rank runs this, with the same settings
//! let mpi = dl_mpi::Mpi::init().unwrap();
//! let mnist = Mnist::load("datasets/mnist").unwrap();
//! let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network();
//! let trainer = Trainer::new(&mut net, &mnist.train, &mnist.test, TrainerConfig::default()).unwrap();
//! let history = trainer.distributed(Distributed::new(&mpi)).train().unwrap();
//! if dl_train::distributed::Communicator::rank(&mpi) == 0 {
//!     println!("test accuracy: {:.4}", history.test_accuracy);
//! }
//! ```

use dl_train::Communicator;

/// Why MPI could not start.
#[derive(Debug, thiserror::Error)]
pub enum MpiError {
    /// The crate was built without the `mpi` feature.
    #[error(
        "this build has no MPI: install libopenmpi-dev, openmpi-bin and libclang-dev, and \
         build with `--features mpi`"
    )]
    NotBuilt,
    /// MPI was already started in this process (it can be started once).
    #[error("MPI is already initialised in this process")]
    AlreadyInitialized,
}

/// How [`Communicator::all_reduce_sum`] adds the ranks' buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Every rank gathers every buffer and adds them in rank order: the same bits as
    /// [`dl_train::ThreadGroup`] and as one process summing the same slices
    /// (`micro_batches`), for any number of ranks. Each rank receives `N - 1` buffers.
    #[default]
    Ordered,
    /// `MPI_Allreduce` with `MPI_SUM`: the MPI library's own algorithm (a ring or a tree,
    /// `2 (N - 1) / N` buffers per rank for a ring), whose order of additions is its own;
    /// the same bits as [`Reduction::Ordered`] on 2 ranks (`a + b = b + a`).
    Native,
}

impl std::str::FromStr for Reduction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ordered" => Ok(Self::Ordered),
            "native" => Ok(Self::Native),
            _ => Err(format!("unknown reduction {s:?} (ordered, native)")),
        }
    }
}

/// This process's place among the processes `mpirun` started (`MPI_COMM_WORLD`).
/// MPI is finalised when it is dropped.
pub struct Mpi {
    #[cfg(feature = "mpi")]
    inner: imp::Inner,
    #[cfg(not(feature = "mpi"))]
    never: std::convert::Infallible,
    reduction: Reduction,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("reduction", &self.reduction)
            .finish()
    }
}

impl Mpi {
    /// Starts MPI (`MPI_Init`). A process started without `mpirun` is a world of one
    /// rank.
    pub fn init() -> Result<Self, MpiError> {
        #[cfg(feature = "mpi")]
        {
            Ok(Self {
                inner: imp::Inner::init()?,
                reduction: Reduction::default(),
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            Err(MpiError::NotBuilt)
        }
    }

    /// Sums with `reduction` from now on.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sums with `reduction` from now on.
    pub fn set_reduction(&mut self, reduction: Reduction) {
        self.reduction = reduction;
    }

    /// How the sums are made.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// The name of the machine this rank runs on (`MPI_Get_processor_name`).
    pub fn processor_name(&self) -> String {
        #[cfg(feature = "mpi")]
        {
            self.inner.processor_name()
        }
        #[cfg(not(feature = "mpi"))]
        match self.never {}
    }

    /// Ends every rank of the job at once (`MPI_Abort`), with `code` as `mpirun`'s exit
    /// status: what a rank that cannot go on calls, so that the others do not wait for
    /// it for ever.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        {
            self.inner.abort(code)
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = code;
            match self.never {}
        }
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        #[cfg(feature = "mpi")]
        {
            self.inner.rank()
        }
        #[cfg(not(feature = "mpi"))]
        match self.never {}
    }

    fn size(&self) -> usize {
        #[cfg(feature = "mpi")]
        {
            self.inner.size()
        }
        #[cfg(not(feature = "mpi"))]
        match self.never {}
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) {
        #[cfg(feature = "mpi")]
        self.inner.broadcast(buf, root);
        #[cfg(not(feature = "mpi"))]
        let _ = (buf, root, self.never);
    }

    fn broadcast_f64(&self, buf: &mut [f64], root: usize) {
        #[cfg(feature = "mpi")]
        self.inner.broadcast_f64(buf, root);
        #[cfg(not(feature = "mpi"))]
        let _ = (buf, root, self.never);
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) {
        #[cfg(feature = "mpi")]
        self.inner.all_reduce_sum(buf, self.reduction);
        #[cfg(not(feature = "mpi"))]
        let _ = (buf, self.never);
    }

    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        #[cfg(feature = "mpi")]
        {
            self.inner.all_gather_u64(value)
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = value;
            match self.never {}
        }
    }
}

#[cfg(feature = "mpi")]
mod imp {
    use std::cell::RefCell;

    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::{MpiError, Reduction};

    pub(crate) struct Inner {
        // dropped last: MPI_Finalize
        world: SimpleCommunicator,
        /// The gathered buffers (ordered) or the copy sent (native), kept between steps.
        gathered: RefCell<Vec<f32>>,
        _universe: Universe,
    }

    impl Inner {
        pub(crate) fn init() -> Result<Self, MpiError> {
            let universe = mpi::initialize().ok_or(MpiError::AlreadyInitialized)?;
            Ok(Self {
                world: universe.world(),
                gathered: RefCell::new(Vec::new()),
                _universe: universe,
            })
        }

        pub(crate) fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        pub(crate) fn size(&self) -> usize {
            self.world.size() as usize
        }

        pub(crate) fn processor_name(&self) -> String {
            mpi::environment::processor_name().unwrap_or_default()
        }

        pub(crate) fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }

        pub(crate) fn broadcast(&self, buf: &mut [f32], root: usize) {
            self.world.process_at_rank(root as i32).broadcast_into(buf);
        }

        pub(crate) fn broadcast_f64(&self, buf: &mut [f64], root: usize) {
            self.world.process_at_rank(root as i32).broadcast_into(buf);
        }

        pub(crate) fn all_reduce_sum(&self, buf: &mut [f32], reduction: Reduction) {
            match reduction {
                Reduction::Native => {
                    // MPI reads and writes separate buffers: a copy of `buf` to send
                    let mut send = self.gathered.borrow_mut();
                    send.clear();
                    send.extend_from_slice(buf);
                    self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
                }
                Reduction::Ordered => {
                    let mut all = self.gathered.borrow_mut();
                    all.resize(buf.len() * self.size(), 0.0);
                    self.world.all_gather_into(&buf[..], &mut all[..]);
                    let mut parts = all.chunks_exact(buf.len().max(1));
                    if let Some(first) = parts.next() {
                        buf.copy_from_slice(first);
                    }
                    for part in parts {
                        buf.iter_mut().zip(part).for_each(|(b, p)| *b += p);
                    }
                }
            }
        }

        pub(crate) fn all_gather_u64(&self, value: u64) -> Vec<u64> {
            let mut out = vec![0u64; self.size()];
            self.world.all_gather_into(&value, &mut out[..]);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_parse_by_name_and_others_are_refused() {
        assert_eq!("ordered".parse::<Reduction>(), Ok(Reduction::Ordered));
        assert_eq!("native".parse::<Reduction>(), Ok(Reduction::Native));
        let err = "ring".parse::<Reduction>().unwrap_err();
        assert!(err.contains("\"ring\"") && err.contains("ordered, native"), "{err}");
        assert_eq!(Reduction::default(), Reduction::Ordered);
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn without_the_feature_init_says_how_to_build_with_mpi() {
        let err = Mpi::init().unwrap_err();
        assert!(matches!(err, MpiError::NotBuilt));
        let text = err.to_string();
        assert!(
            text.contains("libopenmpi-dev") && text.contains("--features mpi"),
            "{text}"
        );
    }
}
