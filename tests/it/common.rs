//! Helpers shared by the integration tests: the `taft` binary, temp dirs, the project's
//! Python, and a real S3-compatible server on 127.0.0.1.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `taft` with JSON logs (what schedulers see).
pub fn taft() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taft"));
    cmd.env("TAFT_LOG_FORMAT", "json").env_remove("TAFT_LOG").current_dir(root());
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "exit {}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr);
        self
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("taft runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `taft ARGS` and returns the outcome.
pub fn taft_run(args: &[&str]) -> Run {
    run(taft().args(args))
}

/// A temporary directory under the target's (`target/tmp`). Fixtures shared by a process's
/// tests live in statics, which are never dropped: what an earlier run left there over an
/// hour ago is removed when a run makes its first directory. The directory is made when
/// missing (a test binary run where its build's `target/` is not, as on another machine).
pub fn tempdir() -> tempfile::TempDir {
    static PRUNED: std::sync::Once = std::sync::Once::new();
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    PRUNED.call_once(|| {
        std::fs::create_dir_all(parent).expect("the tests' temporary directory");
        prune(parent, Duration::from_secs(3600))
    });
    tempfile::Builder::new().prefix("taft-it-").tempdir_in(parent).expect("temp dir")
}

/// Removes the `taft-it-*` directories in `parent` last changed more than `age` ago.
fn prune(parent: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        if old && entry.file_name().to_string_lossy().starts_with("taft-it-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The project's Python (installed by scripts/bootstrap).
pub fn python() -> Command {
    let py = root().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/test, which bootstraps it", py.display());
    let mut cmd = Command::new(py);
    // Models come from local directories only.
    cmd.env("HF_HUB_OFFLINE", "1").env("TRANSFORMERS_OFFLINE", "1");
    cmd
}

pub fn manifest(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("_MANIFEST.json")).ok()?;
    Some(serde_json::from_str(&text).expect("manifest is JSON"))
}

/// The JSON log events a run wrote to stderr.
pub fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Writes lines to a file and returns its path.
pub fn write_lines(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An s3s-fs server on 127.0.0.1 whose buckets are folders of `dir`.
pub struct S3Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

pub const S3_KEY: &str = "taft-test-key";
pub const S3_SECRET: &str = "taft-test-secret";

impl S3Server {
    pub fn start(dir: &Path) -> S3Server {
        std::fs::create_dir_all(dir).unwrap();
        let mut server = S3Server { port: free_port(), dir: dir.to_path_buf(), child: None };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        let bin = root().join(".tools/bin/s3s-fs");
        assert!(bin.exists(), "{} missing: run scripts/test, which builds it", bin.display());
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn bucket(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Points a command at this server through the standard AWS variables.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
