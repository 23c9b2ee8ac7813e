//! Host-side harness for Vigil's QEMU scenarios.
//!
//! A scenario boots the hypervisor image under `scripts/qemu` with boot
//! arguments that select it, and ends through `qemu-exit` (semihosting).
//! The harness enforces a timeout (a hang is a failure, never a stalled
//! test run), captures the serial log, and judges the run by its exit
//! status *and* the lines it must contain.
//!
//! The image is the one `scripts/test` built (`VIGIL_IMAGE`), or is built
//! here on first use.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Default wall-clock limit for one QEMU run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Path of the hypervisor image, building it once per test process if
/// `VIGIL_IMAGE` does not name one.
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| built("VIGIL_IMAGE", "vigil"))
}

/// Path of the in-project test guest (tests/guests/testguest), built once
/// per test process if `VIGIL_TESTGUEST` does not name one.
pub fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| built("VIGIL_TESTGUEST", "testguest"))
}

/// An aarch64 binary of this workspace: `$var` if set, else built now.
fn built(var: &str, package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} is not a file", p.display());
        return p;
    }
    let root = workspace_root();
    // A target directory of its own: the `cargo test` that runs us may
    // still hold the lock on the main one.
    let target = root.join("target/harness");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--target",
            "aarch64-unknown-none",
            "--release",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {package}: {e}"));
    assert!(status.success(), "building {package} failed");
    target.join("aarch64-unknown-none/release").join(package)
}

/// A guest VM for `--guest` (see scripts/qemu).
#[derive(Clone, Debug)]
pub struct Guest {
    name: String,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cpus: usize,
    mem_mib: u64,
    pcpus: Option<Vec<usize>>,
    test_device: bool,
    bootargs: String,
}

impl Guest {
    /// The in-project test guest running scenario `scenario`
    /// (`vigil.guest=<scenario>`), named after it.
    pub fn test(scenario: &str) -> Self {
        Self {
            name: scenario.into(),
            kernel: test_guest().to_path_buf(),
            initrd: None,
            cpus: 1,
            mem_mib: 64,
            pcpus: None,
            test_device: false,
            bootargs: format!("vigil.guest={scenario}"),
        }
    }

    /// Any kernel image.
    pub fn kernel(name: &str, kernel: &Path) -> Self {
        Self {
            kernel: kernel.to_path_buf(),
            bootargs: String::new(),
            ..Self::test(name)
        }
        .named(name)
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn cpus(mut self, n: usize) -> Self {
        self.cpus = n;
        self
    }

    pub fn mem_mib(mut self, m: u64) -> Self {
        self.mem_mib = m;
        self
    }

    /// Pin vCPU i to physical CPU `pcpus[i]`.
    pub fn pcpus(mut self, pcpus: &[usize]) -> Self {
        self.pcpus = Some(pcpus.to_vec());
        self
    }

    pub fn test_device(mut self) -> Self {
        self.test_device = true;
        self
    }

    pub fn initrd(mut self, p: &Path) -> Self {
        self.initrd = Some(p.to_path_buf());
        self
    }

    pub fn bootargs(mut self, a: &str) -> Self {
        self.bootargs = a.into();
        self
    }

    /// The `--guest` spec.
    pub fn spec(&self) -> String {
        let mut s = format!(
            "name={},kernel={},cpus={},mem={}",
            self.name,
            self.kernel.display(),
            self.cpus,
            self.mem_mib
        );
        if let Some(i) = &self.initrd {
            s += &format!(",initrd={}", i.display());
        }
        if let Some(p) = &self.pcpus {
            let list: Vec<String> = p.iter().map(|c| c.to_string()).collect();
            s += &format!(",pcpus={}", list.join(":"));
        }
        if self.test_device {
            s += ",test-device";
        }
        s + &format!(",bootargs={}", self.bootargs)
    }
}

/// How a QEMU run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited with this status (the scenario's `qemu-exit` code).
    Exited(i32),
    /// Killed by a signal other than ours.
    Signalled,
    /// Still running at the timeout; killed by the harness.
    TimedOut,
}

/// The result of one QEMU run.
#[derive(Debug, Clone)]
pub struct Run {
    pub ending: Ending,
    /// Everything the serial console printed (CR removed).
    pub log: String,
    pub elapsed: Duration,
}

impl Run {
    /// Whether the scenario passed: exit status 0 and every expected line
    /// present. Returns the reasons it failed otherwise.
    pub fn check(&self, expected: &[&str]) -> Result<(), String> {
        let mut why = Vec::new();
        match self.ending {
            Ending::Exited(0) => {}
            Ending::Exited(c) => why.push(format!("QEMU exited with status {c}")),
            Ending::Signalled => why.push("QEMU was killed by a signal".into()),
            Ending::TimedOut => why.push(format!("timed out after {:?}", self.elapsed)),
        }
        for line in missing_lines(&self.log, expected) {
            why.push(format!("log lacks a line containing {line:?}"));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}\n--- serial log ---\n{}",
                why.join("\n"),
                self.log
            ))
        }
    }

    /// Lines of the log containing `needle`.
    pub fn lines_with<'a>(&'a self, needle: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.log.lines().filter(move |l| l.contains(needle))
    }
}

/// The expected strings that no line of `log` contains.
pub fn missing_lines<'a>(log: &str, expected: &[&'a str]) -> Vec<&'a str> {
    expected
        .iter()
        .copied()
        .filter(|e| !log.lines().any(|l| l.contains(e)))
        .collect()
}

/// One QEMU invocation of the image.
pub struct Qemu {
    append: String,
    timeout: Duration,
    extra: Vec<String>,
    guests: Vec<Guest>,
}

impl Qemu {
    /// Boot with these boot arguments (`/chosen/bootargs`).
    pub fn new(append: &str) -> Self {
        Self {
            append: append.to_string(),
            timeout: DEFAULT_TIMEOUT,
            extra: Vec::new(),
            guests: Vec::new(),
        }
    }

    /// Boot Vigil with these VMs.
    pub fn with_guests(guests: &[Guest]) -> Self {
        let mut q = Self::new("");
        q.guests = guests.to_vec();
        q
    }

    /// Add a VM.
    pub fn guest(mut self, g: Guest) -> Self {
        self.guests.push(g);
        self
    }

    /// Run the named in-kernel scenario (`vigil.test=<name>`).
    pub fn scenario(name: &str) -> Self {
        Self::new(&format!("vigil.test={name}"))
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Extra QEMU arguments after the board's.
    pub fn qemu_arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// Boot, wait for the exit or the timeout, and collect the log.
    pub fn run(&self) -> Run {
        let script = workspace_root().join("scripts/qemu");
        let mut cmd = Command::new(script);
        cmd.arg("--append").arg(&self.append);
        for g in &self.guests {
            cmd.arg("--guest").arg(g.spec());
        }
        cmd.arg(image());
        if !self.extra.is_empty() {
            cmd.arg("--").args(&self.extra);
        }
        run_with_timeout(cmd, self.timeout)
    }
}

/// Run `cmd` (which must `exec` QEMU, so killing it kills QEMU), capturing
/// stdout, and kill it at `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting QEMU (is qemu-system-aarch64 installed? run scripts/setup)");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let ending = loop {
        if let Some(status) = child.try_wait().expect("waiting for QEMU") {
            break ending_of(status);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Ending::TimedOut;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
    let stderr = err_reader.join().unwrap_or_default();
    if !stderr.is_empty() {
        log.push_str("--- QEMU stderr ---\n");
        log.push_str(&String::from_utf8_lossy(&stderr));
    }
    Run {
        ending,
        log,
        elapsed: start.elapsed(),
    }
}

fn ending_of(status: ExitStatus) -> Ending {
    match status.code() {
        Some(c) => Ending::Exited(c),
        None => Ending::Signalled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ending: Ending, log: &str) -> Run {
        Run {
            ending,
            log: log.into(),
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn passes_only_with_status_zero_and_all_lines() {
        let log = "[cpu0 INFO ] a b c\n[cpu1 INFO ] d e\n";
        assert!(run(Ending::Exited(0), log).check(&["a b", "d e"]).is_ok());
        let e = run(Ending::Exited(0), log)
            .check(&["a b", "zz"])
            .unwrap_err();
        assert!(e.contains("log lacks a line containing \"zz\""), "{e}");
        let e = run(Ending::Exited(1), log).check(&["a b"]).unwrap_err();
        assert!(e.contains("QEMU exited with status 1"), "{e}");
        let e = run(Ending::TimedOut, log).check(&[]).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(run(Ending::Signalled, log).check(&[]).is_err());
    }

    #[test]
    fn expected_text_must_be_within_one_line() {
        assert_eq!(missing_lines("ab\ncd\n", &["b\nc", "cd"]), vec!["b\nc"]);
    }

    #[test]
    fn timeout_kills_a_hanging_command() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let r = run_with_timeout(cmd, Duration::from_millis(300));
        assert_eq!(r.ending, Ending::TimedOut);
        assert!(r.elapsed < Duration::from_secs(10));
        assert!(r.log.contains("started"));
    }

    #[test]
    fn exit_status_is_reported() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hi; exit 3"]);
        let r = run_with_timeout(cmd, Duration::from_secs(10));
        assert_eq!(r.ending, Ending::Exited(3));
        assert_eq!(r.log, "hi\n");
    }
}
