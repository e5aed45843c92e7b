//! `on_pool` on a global pool of one thread (this test binary is a process of its own,
//! so its global pool can be set).

/// From a thread outside the pool the work runs on the pool's one thread, and its value
/// comes back; where the pool has more threads (`on_pool`'s unit tests) it stays put.
#[test]
fn work_for_a_pool_of_one_thread_runs_on_that_thread() {
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().unwrap();
    let outside = std::thread::spawn(|| {
        let caller = rayon::current_thread_index();
        (caller, dl_tensor::on_pool(rayon::current_thread_index))
    });
    let (caller, ran) = outside.join().unwrap();
    assert_eq!(caller, None);
    assert_eq!(ran, Some(0));
    assert_eq!(dl_tensor::on_pool(|| 6 * 7), 42);
}
