//! No build step: this script is here for its build-dependency. The trainer's `mpi` feature
//! (bindgen, through mpi-sys) compiles the host's `syn` with `visit-mut`; naming that feature
//! here too gives `cargo run -p visionthink` (the README's demo, the examples) and the workspace
//! build with `--features visionthink-train/mpi` (CI's tests) the same host `syn`, so the
//! proc-macro crates and everything built with them are compiled once, not twice.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
