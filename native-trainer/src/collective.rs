//! Data-parallel training over an existing collective engine: [`Collective`] is what the GRPO
//! loop needs from one (sums of gradients and metrics, the gathering of per-rank results), with
//! `Single` for one process, `Mpi` (feature `mpi`: the `mpi` crate on the system's MPI, OpenMPI
//! from Debian here) for `mpirun -np N visionthink-train train …`, and `Nccl` (feature `cuda`:
//! cudarc's NCCL bindings, one process per GPU).
//!
//! The same code runs on every rank. Prompts are handed out by their global position in a step
//! (prompt `j` of the step belongs to rank `j mod N`), and each prompt's rollouts depend only on
//! the seed and that position, never on the rank, so the step's groups are the same whatever
//! the rank count; a group never straddles ranks. Which groups dynamic sampling keeps, and the
//! metrics, are gathered after each sampling round, so every rank knows the step's kept groups
//! in their global order and cuts the same mini-batches; each rank backpropagates its own groups
//! of a mini-batch (normalised by the whole mini-batch), the gradients are summed across ranks,
//! and every rank takes the same optimizer step. Rank 0 writes the checkpoints and the metrics.

use anyhow::{bail, Result};

/// What data-parallel training needs from a collective engine.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// Every rank's `mine`, in rank order.
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Sums `buf` element-wise over the ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
}

/// One process: the collectives are the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }

    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
}

/// The engine of this process: NCCL when `VISIONTHINK_NCCL_ID_FILE` is set (feature `cuda`; one
/// process per GPU), MPI when the binary has the `mpi` feature and was started by an MPI launcher
/// (`mpirun`; its environment says so), else one process.
pub fn from_env() -> Result<Box<dyn Collective>> {
    if std::env::var_os("VISIONTHINK_NCCL_ID_FILE").is_some() {
        #[cfg(feature = "cuda")]
        {
            return Ok(Box::new(Nccl::from_env()?));
        }
        #[cfg(not(feature = "cuda"))]
        bail!(
            "VISIONTHINK_NCCL_ID_FILE asks for NCCL, but this binary has no CUDA support: build it \
             with `--features cuda`"
        );
    }
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !launched {
        return Ok(Box::new(Single));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(Mpi::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        bail!(
            "started by an MPI launcher, but this binary has no MPI support: build it with \
             `cargo build --release -p visionthink-train --features mpi`"
        )
    }
}

/// Checks that every rank runs the same thing: each rank's `config` (JSON) and `weights` (a
/// fingerprint of the starting weights and step) are gathered and compared with rank 0's; on a
/// mismatch every rank gets the same error naming the ranks and the settings that differ.
pub fn check_same(c: &dyn Collective, config: &serde_json::Value, weights: &str) -> Result<()> {
    let mine = serde_json::to_vec(&serde_json::json!({"config": config, "weights": weights}))?;
    let all = c.all_gather_bytes(&mine)?;
    let parsed: Vec<serde_json::Value> = all
        .iter()
        .enumerate()
        .map(|(r, b)| {
            serde_json::from_slice(b)
                .map_err(|e| anyhow::anyhow!("rank {r} sent an unreadable fingerprint: {e}"))
        })
        .collect::<Result<_>>()?;
    let mut problems = Vec::new();
    for (r, v) in parsed.iter().enumerate().skip(1) {
        let mut keys = Vec::new();
        diff_paths(&parsed[0]["config"], &v["config"], "", &mut keys);
        if !keys.is_empty() {
            problems.push(format!(
                "rank {r}'s configuration differs in {}",
                keys.join(", ")
            ));
        }
        if v["weights"] != parsed[0]["weights"] {
            problems.push(format!(
                "rank {r} starts from other weights ({} vs rank 0's {})",
                v["weights"], parsed[0]["weights"]
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the ranks do not run the same training: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// The dotted paths where two JSON values differ, each with both values.
fn diff_paths(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                diff_paths(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{at} ({a} on rank 0, {b} here)")),
        _ => {}
    }
}

/// Sums `values` over the ranks in f64 (metrics and flags; gathered as bytes, so nothing is
/// rounded to f32).
pub fn sum_f64(c: &dyn Collective, values: &[f64]) -> Result<Vec<f64>> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let all = c.all_gather_bytes(&bytes)?;
    let mut out = vec![0.0f64; values.len()];
    for (r, b) in all.iter().enumerate() {
        if b.len() != bytes.len() {
            bail!(
                "rank {r} sent {} bytes of sums, expected {}",
                b.len(),
                bytes.len()
            );
        }
        for (o, chunk) in out.iter_mut().zip(b.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            *o += f64::from_le_bytes(a);
        }
    }
    Ok(out)
}

#[cfg(feature = "mpi")]
pub use mpi_engine::Mpi;

#[cfg(feature = "cuda")]
pub use nccl_engine::Nccl;

/// Seconds a collective (or the wait for NCCL's id) may take before the rank gives up.
#[cfg(any(feature = "mpi", feature = "cuda"))]
fn collective_timeout() -> f64 {
    std::env::var("VISIONTHINK_COLLECTIVE_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0 && v.is_finite())
        .unwrap_or(1800.0)
}

#[cfg(feature = "cuda")]
mod nccl_engine {
    use super::Collective;
    use anyhow::{anyhow, bail, Context, Result};
    use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaStream};
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use std::sync::Arc;

    /// One process per GPU with NCCL between them (the `cuda` feature). Rank and world size come
    /// from the launcher's environment (`RANK`, `WORLD_SIZE`, as `torchrun` sets them); each
    /// process sees its one GPU (`CUDA_VISIBLE_DEVICES`, device 0 for NCCL and for the model).
    /// Rank 0 creates NCCL's unique id and writes it to `VISIONTHINK_NCCL_ID_FILE`, a path that
    /// must not exist yet (a stale id from an earlier run is refused); the other ranks wait for it.
    /// Buffers are copied to the GPU for each collective and back (the trainer sums host-side
    /// gradients).
    pub struct Nccl {
        comm: Comm,
        stream: Arc<CudaStream>,
        rank: usize,
        size: usize,
    }

    impl std::fmt::Debug for Nccl {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Nccl(rank {} of {})", self.rank, self.size)
        }
    }

    fn number(name: &str) -> Result<usize> {
        std::env::var(name)
            .with_context(|| {
                format!("{name} is not set (launch one process per GPU, e.g. with torchrun)")
            })?
            .parse()
            .with_context(|| format!("{name} is not a number"))
    }

    impl Nccl {
        /// Joins the job described by the environment.
        pub fn from_env() -> Result<Self> {
            let (rank, size) = (number("RANK")?, number("WORLD_SIZE")?);
            if rank >= size {
                bail!("RANK {rank} is not below WORLD_SIZE {size}");
            }
            let path = std::env::var("VISIONTHINK_NCCL_ID_FILE")
                .context("VISIONTHINK_NCCL_ID_FILE is not set")?;
            let id = if rank == 0 {
                if std::path::Path::new(&path).exists() {
                    bail!("{path} exists: remove it, or give each run a fresh VISIONTHINK_NCCL_ID_FILE");
                }
                let id = Id::new().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))?;
                let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
                let tmp = format!("{path}.tmp");
                std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {tmp}"))?;
                std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {path}"))?;
                id
            } else {
                wait_for_id(&path, rank)?
            };
            let ctx = CudaContext::new(0).map_err(|e| anyhow!("CUDA device 0: {e:?}"))?;
            let stream = ctx.default_stream();
            let comm = Comm::from_rank(stream.clone(), rank, size, id)
                .map_err(|e| anyhow!("ncclCommInitRank (rank {rank} of {size}): {e:?}"))?;
            Ok(Self {
                comm,
                stream,
                rank,
                size,
            })
        }
    }

    /// Rank 0's id, once its file is complete.
    fn wait_for_id(path: &str, rank: usize) -> Result<Id> {
        let timeout = super::collective_timeout();
        let t = std::time::Instant::now();
        loop {
            match std::fs::read(path) {
                Ok(b) if b.len() == 128 => {
                    let mut raw = [0 as std::ffi::c_char; 128];
                    for (d, s) in raw.iter_mut().zip(&b) {
                        *d = *s as std::ffi::c_char;
                    }
                    return Ok(Id::uninit(raw));
                }
                _ if t.elapsed().as_secs_f64() > timeout => bail!(
                    "rank {rank}: no NCCL id in {path} after {timeout} s (is rank 0 running?)"
                ),
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }

    fn cuda<T, E: std::fmt::Debug>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
        r.map_err(|e| anyhow!("{what}: {e:?}"))
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            let mut d = cuda(self.stream.clone_htod(&*buf), "copy to the GPU")?;
            cuda(
                self.comm.all_reduce_in_place(&mut d, &ReduceOp::Sum),
                "ncclAllReduce",
            )?;
            cuda(self.stream.memcpy_dtoh(&d, buf), "copy from the GPU")?;
            cuda(self.stream.synchronize(), "synchronize")
        }

        fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            let len = [mine.len() as u64];
            let d_len = cuda(self.stream.clone_htod(&len[..]), "copy to the GPU")?;
            let mut d_lens = cuda(self.stream.alloc_zeros::<u64>(self.size), "alloc")?;
            cuda(self.comm.all_gather(&d_len, &mut d_lens), "ncclAllGather")?;
            let lens = cuda(self.stream.clone_dtoh(&d_lens), "copy from the GPU")?;
            let max = lens.iter().copied().max().unwrap_or(0) as usize;
            if max == 0 {
                return Ok(vec![Vec::new(); self.size]);
            }
            let mut padded = mine.to_vec();
            padded.resize(max, 0);
            let d_mine = cuda(self.stream.clone_htod(&padded[..]), "copy to the GPU")?;
            let mut d_all = cuda(self.stream.alloc_zeros::<u8>(max * self.size), "alloc")?;
            cuda(self.comm.all_gather(&d_mine, &mut d_all), "ncclAllGather")?;
            let all = cuda(self.stream.clone_dtoh(&d_all), "copy from the GPU")?;
            Ok(lens
                .iter()
                .enumerate()
                .map(|(r, &l)| all[r * max..r * max + l as usize].to_vec())
                .collect())
        }
    }
}

#[cfg(feature = "mpi")]
mod mpi_engine {
    use super::Collective;
    use anyhow::{bail, Result};
    use mpi::datatype::PartitionMut;
    use mpi::traits::*;

    /// MPI's `MPI_COMM_WORLD` (initialised once per process; finalised when dropped).
    ///
    /// A watchdog bounds every collective: one that has not completed after
    /// `VISIONTHINK_COLLECTIVE_TIMEOUT_S` seconds (default 1800; it includes waiting for the
    /// slowest rank's rollouts) means a rank hung or is gone, and this rank exits with an error
    /// naming itself and the wait, which makes the launcher end the job (no silent hang).
    pub struct Mpi {
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
        busy_since: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    }

    /// Marks a collective in progress for the watchdog while it lives.
    struct Busy<'a>(&'a std::sync::Mutex<Option<std::time::Instant>>);

    impl<'a> Busy<'a> {
        fn start(m: &'a std::sync::Mutex<Option<std::time::Instant>>) -> Self {
            if let Ok(mut g) = m.lock() {
                *g = Some(std::time::Instant::now());
            }
            Self(m)
        }
    }

    impl Drop for Busy<'_> {
        fn drop(&mut self) {
            if let Ok(mut g) = self.0.lock() {
                *g = None;
            }
        }
    }

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "Mpi(rank {} of {})",
                self.world.rank(),
                self.world.size()
            )
        }
    }

    impl Mpi {
        /// Initialises MPI.
        pub fn init() -> Result<Self> {
            let Some(universe) = mpi::initialize() else {
                bail!("MPI was initialised already in this process");
            };
            let world = universe.world();
            let timeout = super::collective_timeout();
            let busy_since = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
            let (rank, size) = (world.rank(), world.size());
            let watched = busy_since.clone();
            std::thread::Builder::new()
                .name("collective-watchdog".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    let since = watched.lock().ok().and_then(|g| *g);
                    if let Some(t) = since {
                        let waited = t.elapsed().as_secs_f64();
                        if waited > timeout {
                            eprintln!(
                                "error: rank {rank} of {size}: a collective operation has waited {waited:.0} s \
                                 (VISIONTHINK_COLLECTIVE_TIMEOUT_S = {timeout}): another rank is hung or gone; ending this rank"
                            );
                            std::process::exit(70);
                        }
                    }
                })?;
            Ok(Self {
                _universe: universe,
                world,
                busy_since,
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        fn size(&self) -> usize {
            self.world.size() as usize
        }

        fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            let _busy = Busy::start(&self.busy_since);
            let n = self.size();
            let len = i32::try_from(mine.len())?;
            let mut lens = vec![0i32; n];
            self.world.all_gather_into(&len, &mut lens[..]);
            let mut displs = Vec::with_capacity(n);
            let mut total = 0i32;
            for &l in &lens {
                displs.push(total);
                total = total
                    .checked_add(l)
                    .ok_or_else(|| anyhow::anyhow!("gathered messages over 2 GiB"))?;
            }
            let mut buf = vec![0u8; usize::try_from(total)?];
            {
                let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
                self.world.all_gather_varcount_into(mine, &mut part);
            }
            Ok(lens
                .iter()
                .zip(&displs)
                .map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec())
                .collect())
        }

        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            let _busy = Busy::start(&self.busy_since);
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_is_the_identity() {
        let c = Single;
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut v = [1.0f32, 2.0];
        c.all_reduce_sum(&mut v).expect("sum");
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(sum_f64(&c, &[0.5, 3.0]).expect("sums"), [0.5, 3.0]);
        check_same(&c, &serde_json::json!({"a": 1}), "w").expect("same");
    }

    /// Ranks simulated in one process: every rank's bytes are known up front.
    struct Fake {
        rank: usize,
        all: Vec<Vec<u8>>,
    }

    impl Collective for Fake {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.all.len()
        }
        fn all_gather_bytes(&self, _mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            Ok(self.all.clone())
        }
        fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_rank_that_differs_is_named_with_the_setting() {
        let fp = |lr: f64, w: &str| {
            serde_json::to_vec(&serde_json::json!({"config": {"optim": {"lr": lr}, "run": {"seed": 3}}, "weights": w}))
                .expect("json")
        };
        let c = Fake {
            rank: 0,
            all: vec![
                fp(0.001, "w"),
                fp(0.001, "w"),
                fp(0.002, "w"),
                fp(0.001, "v"),
            ],
        };
        let cfg = serde_json::json!({"optim": {"lr": 0.001}, "run": {"seed": 3}});
        let msg = check_same(&c, &cfg, "w").expect_err("differs").to_string();
        assert!(
            msg.contains("rank 2's configuration differs in optim.lr"),
            "{msg}"
        );
        assert!(msg.contains("rank 3 starts from other weights"), "{msg}");
        assert!(!msg.contains("rank 1"), "{msg}");
    }
}
