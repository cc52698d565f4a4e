//! The Docker CLI as the tests drive it: a daemon that can pull nothing, so
//! every image is imported from files the test writes or built `FROM` one;
//! a private `DOCKER_CONFIG` per test so logins never touch the machine's;
//! and every image a test makes is removed when it ends.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// One `docker` command with no test state: stdout on success, stderr not.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// Whether a Docker daemon answers here.
pub fn daemon_available() -> bool {
    docker(&["info", "--format", "{{.ServerVersion}}"]).is_ok()
}

/// The daemon's version, for the README and the closing note.
pub fn daemon_version() -> String {
    docker(&["version", "--format", "{{.Server.Version}}"]).unwrap_or_default()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A test's Docker client: its own credential store and its own images.
pub struct DockerCli {
    config: tempfile::TempDir,
    made: Mutex<Vec<String>>,
}

impl DockerCli {
    pub fn new() -> DockerCli {
        DockerCli {
            config: tempfile::tempdir().unwrap(),
            made: Mutex::new(Vec::new()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(args)
            .env("DOCKER_CONFIG", self.config.path())
            // The classic builder: BuildKit's would try to resolve FROM
            // images in a registry this machine cannot reach.
            .env("DOCKER_BUILDKIT", "0");
        c
    }

    /// `docker ARGS` with `input` on stdin: stdout, or stderr on failure.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Result<String, String> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let _ = writer.join();
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        match out.status.success() {
            true => Ok(text(&out.stdout)),
            false => Err(format!("{}\n{}", text(&out.stderr), text(&out.stdout))),
        }
    }

    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        self.run_with_input(args, b"")
    }

    /// Remembers `tag` for removal at the end of the test.
    pub fn owns(&self, tag: &str) {
        self.made.lock().unwrap().push(tag.to_owned());
    }

    pub fn login(&self, host: &str, user: &str, password: &str) -> Result<String, String> {
        self.run_with_input(
            &["login", host, "--username", user, "--password-stdin"],
            password.as_bytes(),
        )
    }

    /// A one-layer image of the files under `dir` (`docker import`), tagged
    /// with a name of its own; returns the tag.
    pub fn import(&self, dir: &Path) -> String {
        let tag = format!(
            "wharf-test-base:{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = self
            .command(&["import", "-", &tag])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of {}", dir.display());
        assert!(out.status.success(), "docker import: {out:?}");
        self.owns(&tag);
        tag
    }

    /// `docker build -t TAG` of a context holding `dockerfile` and `files`.
    pub fn build(&self, tag: &str, dockerfile: &str, files: &[(&str, &[u8])]) {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
        for (name, bytes) in files {
            std::fs::write(ctx.path().join(name), bytes).unwrap();
        }
        self.owns(tag);
        self.run(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()])
            .unwrap_or_else(|e| panic!("docker build {tag}: {e}"));
    }

    /// `docker push`; returns the manifest digest the CLI reports.
    pub fn push(&self, reference: &str) -> Result<String, String> {
        let out = self.run(&["push", reference])?;
        out.lines()
            .find_map(|l| l.split("digest: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| format!("no digest in: {out}"))
    }

    pub fn pull(&self, reference: &str) -> Result<String, String> {
        self.owns(reference);
        self.run(&["pull", reference])
    }

    /// `docker image inspect -f FORMAT`.
    pub fn inspect(&self, reference: &str, format: &str) -> String {
        self.run(&["image", "inspect", "-f", format, reference])
            .unwrap_or_else(|e| panic!("inspect {reference}: {e}"))
    }

    /// Removes images, so a later pull must fetch every layer again.
    pub fn remove(&self, references: &[&str]) {
        for r in references {
            let _ = self.run(&["rmi", "-f", r]);
        }
    }
}

impl Drop for DockerCli {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for tag in made.iter().rev() {
            let _ = docker(&["rmi", "-f", tag]);
        }
    }
}
