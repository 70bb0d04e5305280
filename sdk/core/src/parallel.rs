//! Data-parallel loops over disjoint chunks of a buffer: scoped threads natively, a plain loop on
//! wasm32 (where `std::thread` cannot spawn). The only target split in the core's compute paths.

/// Calls `f(index, chunk)` for every `chunk_len`-sized chunk of `data` (the last may be
/// shorter), spreading contiguous runs of chunks over the available cores.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if chunk_len == 0 || data.is_empty() {
        return;
    }
    let chunks = data.len().div_ceil(chunk_len);
    let threads = threads().min(chunks);
    if threads <= 1 {
        for (i, c) in data.chunks_mut(chunk_len).enumerate() {
            f(i, c);
        }
        return;
    }
    spawn_runs(data, chunk_len, chunks.div_ceil(threads), &f);
}

#[cfg(not(target_arch = "wasm32"))]
fn threads() -> usize {
    // Small images are not worth a thread: callers pass whole rows, so a cutoff on rows is enough.
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

#[cfg(target_arch = "wasm32")]
fn threads() -> usize {
    1
}

#[cfg(not(target_arch = "wasm32"))]
fn spawn_runs<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    per_thread: usize,
    f: &(impl Fn(usize, &mut [T]) + Sync),
) {
    std::thread::scope(|s| {
        for (t, run) in data.chunks_mut(per_thread * chunk_len).enumerate() {
            s.spawn(move || {
                for (i, c) in run.chunks_mut(chunk_len).enumerate() {
                    f(t * per_thread + i, c);
                }
            });
        }
    });
}

#[cfg(target_arch = "wasm32")]
fn spawn_runs<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    _per_thread: usize,
    f: &(impl Fn(usize, &mut [T]) + Sync),
) {
    for (i, c) in data.chunks_mut(chunk_len).enumerate() {
        f(i, c);
    }
}
