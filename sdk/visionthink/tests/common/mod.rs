//! What the process-level tests share: the repository root and a `visionthink serve` child
//! process on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The repository root (tests run the CLI from there, as users do).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `visionthink serve` process, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT/v1`.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `visionthink serve --port 0 ARGS` with `env` (and no API key from the environment)
/// and waits for its banner.
pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_visionthink"))
        .current_dir(root())
        .args(["serve", "--port", "0"])
        .args(args)
        .env_remove("VISIONTHINK_API_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("banner")
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "binds loopback by default: {url}"
    );
    Server { child, url }
}
