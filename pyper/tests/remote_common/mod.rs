//! What the remote-task tests share: the server `scripts/test.sh` started, the script that
//! starts servers of their own, and worker processes of a test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The URL of the server `scripts/test.sh` started.
pub fn server_url() -> String {
    std::env::var("PYPER_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "PYPER_NATS_URL is not set: run these tests with `bash scripts/test.sh`, or start \
             a server with `scripts/nats-server.sh start DIR` and set PYPER_NATS_URL to the \
             URL it prints"
        )
    })
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-server.sh")
}

/// Worker processes of this test binary, killed when dropped.
pub struct Workers {
    url: String,
    exe: PathBuf,
    env: Vec<(String, String)>,
    stderr: Option<PathBuf>,
    children: Arc<Mutex<Vec<Child>>>,
}

impl Workers {
    pub fn new(url: &str) -> Self {
        Workers {
            url: url.to_owned(),
            exe: std::env::current_exe().unwrap(),
            env: Vec::new(),
            stderr: None,
            children: Arc::default(),
        }
    }

    /// Workers of the executable at `exe` instead of this test binary.
    pub fn exe(mut self, exe: &Path) -> Self {
        self.exe = exe.to_owned();
        self
    }

    /// The workers' stderr (their log) goes to the file at `path`.
    pub fn stderr_to(mut self, path: &Path) -> Self {
        self.stderr = Some(path.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts one more worker; returns its pid.
    pub fn start(&self) -> u32 {
        let stderr = match &self.stderr {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path);
                Stdio::from(file.expect("open the workers' log"))
            }
            None => Stdio::inherit(),
        };
        let child = Command::new(&self.exe)
            .args([
                "__pyper_process_worker",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(pyper::WORKER_ENV, &self.url)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start a worker");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    pub fn kill(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        let child = children.iter_mut().find(|child| child.id() == pid).unwrap();
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
    }

    /// Restarts, as a supervisor would, every worker that died; returns how many.
    pub fn restart_dead(&self) -> usize {
        let mut dead = 0;
        {
            let mut children = self.children.lock().unwrap();
            children.retain_mut(|child| match child.try_wait() {
                Ok(Some(_)) => {
                    dead += 1;
                    false
                }
                _ => true,
            });
        }
        for _ in 0..dead {
            self.start();
        }
        dead
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pyper-remote-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `scripts/nats-server.sh` with `args`; returns what it printed (a server's URL).
pub fn run_script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A supervisor of workers, as systemd would be: a worker that dies is started again, until
/// the supervisor is stopped or dropped (however the test ends).
pub struct Supervisor {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Supervisor {
    pub fn new(workers: Workers) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let done = Arc::clone(&done);
            move || {
                let mut restarted = 0;
                while !done.load(Ordering::SeqCst) {
                    restarted += workers.restart_dead();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                restarted
            }
        });
        Supervisor {
            done,
            thread: Some(thread),
        }
    }

    /// Stops supervising, and ends the workers; returns how many it restarted.
    pub fn stop(mut self) -> usize {
        self.done.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map_or(0, |thread| thread.join().unwrap())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}
