//! vaeflow's data path in plain Rust (usable and tested without Python), plus a thin PyO3 layer
//! (`python` feature) exposed to Python as the private module `vaeflow_cli._native`.

pub mod decode;
pub mod dequant;

#[cfg(feature = "python")]
mod python;

/// Run `f` on a rayon pool of `threads` threads (0: rayon's global pool, one thread per core).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    if threads == 0 {
        return f();
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}
