//! Host-side harness for Vigil's QEMU scenarios.
//!
//! A scenario boots the hypervisor image under `scripts/qemu` with boot
//! arguments that select it. When every guest is this repository's code
//! (in-kernel scenarios, the test guest), QEMU runs with semihosting and
//! the scenario ends through `qemu-exit` with any status; otherwise (Linux,
//! any other kernel) it runs as a user's would, without it: status 0
//! through PSCI SYSTEM_OFF, 1 for any failure (Vigil's pvpanic device).
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
    IMAGE.get_or_init(|| built("VIGIL_IMAGE", "vigil", "aarch64-unknown-none-softfloat"))
}

/// Path of the in-project test guest (tests/guests/testguest), built once
/// per test process if `VIGIL_TESTGUEST` does not name one.
pub fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| built("VIGIL_TESTGUEST", "testguest", "aarch64-unknown-none"))
}

/// Debian's arm64 cloud kernel and the busybox initramfs
/// (scripts/fetch-guest): `VIGIL_LINUX_KERNEL`/`VIGIL_LINUX_INITRD` if
/// set, else fetched (or found in the cache) now.
pub fn linux() -> &'static (PathBuf, PathBuf) {
    static LINUX: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    LINUX.get_or_init(|| {
        if let (Some(k), Some(i)) = (
            std::env::var_os("VIGIL_LINUX_KERNEL"),
            std::env::var_os("VIGIL_LINUX_INITRD"),
        ) {
            return (PathBuf::from(k), PathBuf::from(i));
        }
        let text = fetch_guest(&[]);
        (printed(&text, "KERNEL"), printed(&text, "INITRD"))
    })
}

/// The driver domain's service program (kernel/service, a static
/// aarch64-unknown-linux-musl binary): `VIGIL_SERVICE`, or built now.
pub fn service_program() -> &'static Path {
    static SERVICE: OnceLock<PathBuf> = OnceLock::new();
    SERVICE.get_or_init(|| {
        built(
            "VIGIL_SERVICE",
            "vigil-service",
            "aarch64-unknown-linux-musl",
        )
    })
}

/// A service VM's initramfs: the Linux guest's, plus the service program
/// and the uio modules (scripts/fetch-guest --service).
pub fn service_initrd() -> &'static Path {
    static INITRD: OnceLock<PathBuf> = OnceLock::new();
    INITRD.get_or_init(|| {
        let service = service_program().as_os_str();
        printed(
            &fetch_guest(&[std::ffi::OsStr::new("--service"), service]),
            "SERVICE_INITRD",
        )
    })
}

/// What `scripts/fetch-guest --print ARGS` printed (KEY=value lines).
fn fetch_guest(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(workspace_root().join("scripts/fetch-guest"))
        .arg("--print")
        .args(args)
        .output()
        .expect("running scripts/fetch-guest");
    assert!(
        out.status.success(),
        "scripts/fetch-guest {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The path `key` names in scripts/fetch-guest's output.
fn printed(text: &str, key: &str) -> PathBuf {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| PathBuf::from(v.trim_matches('\'')))
        .unwrap_or_else(|| panic!("scripts/fetch-guest printed no {key}: {text}"))
}

/// The test guest linked for RAM at physical 0x6000_0000 (guests that
/// need an identity map, e.g. with PCIe passthrough; use with
/// `Guest::ram_base(0x6000_0000)`). `VIGIL_TESTGUEST_HI`, or built now.
pub fn test_guest_hi() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        if let Some(p) = std::env::var_os("VIGIL_TESTGUEST_HI") {
            return PathBuf::from(p);
        }
        let out = Command::new(workspace_root().join("scripts/build"))
            .env("CARGO_TARGET_DIR", workspace_root().join("target/harness"))
            .output()
            .expect("running scripts/build");
        assert!(out.status.success(), "scripts/build failed");
        workspace_root().join("target/harness/guest-hi/aarch64-unknown-none/release/testguest")
    })
}

/// A binary of this workspace for `target`: `$var` if set, else built now.
fn built(var: &str, package: &str, target_triple: &str) -> PathBuf {
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
            target_triple,
            "--release",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {package}: {e}"));
    assert!(status.success(), "building {package} failed");
    target.join(target_triple).join("release").join(package)
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
    pci: bool,
    ram_base: Option<u64>,
    virtio_blk: Option<String>,
    bootargs: String,
    /// This repository's code (the test guest): may run with semihosting.
    ours: bool,
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
            pci: false,
            ram_base: None,
            virtio_blk: None,
            bootargs: format!("vigil.guest={scenario}"),
            ours: true,
        }
    }

    /// Debian's Linux with the busybox initramfs, `cpus` vCPUs, 512 MiB,
    /// and `init` as the `vigil.init=` modes of tests/linux/init.
    pub fn linux(cpus: usize, init: &str) -> Self {
        let (kernel, initrd) = linux();
        Self::kernel("linux", kernel)
            .initrd(initrd)
            .cpus(cpus)
            .mem_mib(512)
            .bootargs(&format!("console=ttyAMA0 vigil.init={init}"))
    }

    /// A driver domain's service VM named `name`: Debian's Linux with the
    /// service program, 1 vCPU on CPU 3, 256 MiB, the PCIe bridge (its own
    /// disk is a virtio-blk-pci there), serving its client and powering
    /// off once the client is gone.
    pub fn linux_service(name: &str) -> Self {
        let (kernel, _) = linux();
        Self::kernel(name, kernel)
            .initrd(service_initrd())
            .cpus(1)
            .mem_mib(256)
            .pcpus(&[3])
            .pci()
            .bootargs("console=ttyAMA0 vigil.init=service,poweroff")
    }

    /// Any kernel image.
    pub fn kernel(name: &str, kernel: &Path) -> Self {
        Self {
            kernel: kernel.to_path_buf(),
            bootargs: String::new(),
            ours: false,
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

    /// The test guest linked for RAM at 0x6000_0000, with its RAM there.
    pub fn test_hi(scenario: &str) -> Self {
        Self {
            kernel: test_guest_hi().to_path_buf(),
            ram_base: Some(0x6000_0000),
            ..Self::test(scenario)
        }
    }

    /// Give it the host's PCIe bridge (its DMA translated by the SMMU).
    pub fn pci(mut self) -> Self {
        self.pci = true;
        self
    }

    /// Give it a virtio-mmio disk served by the VM named `service`.
    pub fn virtio_blk(mut self, service: &str) -> Self {
        self.virtio_blk = Some(service.into());
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
        if self.pci {
            s += ",pci";
        }
        if let Some(b) = self.ram_base {
            s += &format!(",ram-base={b:#x}");
        }
        if let Some(v) = &self.virtio_blk {
            s += &format!(",virtio-blk={v}");
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

    /// For a scenario that announces an address (`announcement` then the
    /// address as the line's last word) and then faults at EL2 on cpu0:
    /// the address, and Vigil's report of the unexpected exception.
    pub fn announced_fault(&self, announcement: &str) -> (String, &str) {
        let addr = self
            .lines_with(announcement)
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no address announced:\n{}", self.log))
            .to_string();
        let report = self
            .lines_with("unexpected exception on cpu0")
            .next()
            .unwrap_or_else(|| panic!("no exception report:\n{}", self.log));
        (addr, report)
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
    inputs: Vec<Input>,
    semihosting: Option<bool>,
    expected_errors: Vec<String>,
    smp: Option<usize>,
    gic: Option<u8>,
}

impl Qemu {
    /// Boot with these boot arguments (`/chosen/bootargs`).
    pub fn new(append: &str) -> Self {
        Self {
            append: append.to_string(),
            timeout: DEFAULT_TIMEOUT,
            extra: Vec::new(),
            guests: Vec::new(),
            inputs: Vec::new(),
            semihosting: None,
            expected_errors: Vec::new(),
            smp: None,
            gic: None,
        }
    }

    /// Boot the board with `n` physical CPUs (`scripts/qemu --smp`)
    /// instead of its default 4.
    pub fn smp(mut self, n: usize) -> Self {
        self.smp = Some(n);
        self
    }

    /// Boot the board with GIC architecture version `v` (`scripts/qemu
    /// --gic`: 4 is QEMU's GICv4.0) instead of its GICv3. The run then
    /// fails unless Vigil's boot log names that GIC.
    pub fn gic(mut self, v: u8) -> Self {
        self.gic = Some(v);
        self
    }

    /// This scenario's purpose is an error: Vigil logs an ERROR line
    /// containing `line`. Without it, any ERROR line fails the run.
    pub fn expect_error(mut self, line: &str) -> Self {
        self.expected_errors.push(line.to_string());
        self
    }

    /// Run as a user's QEMU runs, without semihosting, whatever the guests.
    pub fn user_config(mut self) -> Self {
        self.semihosting = Some(false);
        self
    }

    /// Run with semihosting whatever the guests (only to show what a guest
    /// could do with it).
    pub fn with_semihosting(mut self) -> Self {
        self.semihosting = Some(true);
        self
    }

    /// Whether this run has semihosting: by default only when every guest
    /// is this repository's code.
    pub fn semihosting(&self) -> bool {
        self.semihosting
            .unwrap_or_else(|| self.guests.iter().all(|g| g.ours))
    }

    /// Type `text` on the console once the output contains `after`.
    pub fn type_after(self, after: &str, text: &str) -> Self {
        self.type_after_nth(after, 1, text)
    }

    /// Type `text` once `after` has appeared `nth` times.
    pub fn type_after_nth(mut self, after: &str, nth: usize, text: &str) -> Self {
        self.inputs.push(Input {
            after: after.into(),
            nth,
            bytes: text.as_bytes().to_vec(),
        });
        self
    }

    /// Boot Vigil with these VMs.
    pub fn with_guests(guests: &[Guest]) -> Self {
        let mut q = Self::new("");
        q.guests = guests.to_vec();
        q
    }

    /// Add a word to Vigil's boot arguments.
    pub fn bootarg(mut self, a: &str) -> Self {
        if !self.append.is_empty() {
            self.append.push(' ');
        }
        self.append.push_str(a);
        self
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

    /// Several of them.
    pub fn qemu_args(mut self, args: &[String]) -> Self {
        self.extra.extend_from_slice(args);
        self
    }

    /// Boot, wait for the exit or the timeout, and collect the log.
    pub fn run(&self) -> Run {
        let script = workspace_root().join("scripts/qemu");
        let mut cmd = Command::new(script);
        if self.semihosting() {
            cmd.arg("--semihosting");
        }
        if let Some(n) = self.smp {
            cmd.arg("--smp").arg(n.to_string());
        }
        if let Some(v) = self.gic {
            cmd.arg("--gic").arg(v.to_string());
        }
        cmd.arg("--append").arg(&self.append);
        for g in &self.guests {
            cmd.arg("--guest").arg(g.spec());
        }
        cmd.arg(image());
        if !self.extra.is_empty() {
            cmd.arg("--").args(&self.extra);
        }
        let run = run_with_input(cmd, self.timeout, &self.inputs);
        let expected: Vec<&str> = self.expected_errors.iter().map(String::as_str).collect();
        if let Err(e) = errors_as_expected(&run.log, &expected) {
            panic!("{e}\n--- serial log ---\n{}", run.log);
        }
        if let Some(v) = self.gic {
            // The board flag took: Vigil names the GIC it found, once.
            let named = run.lines_with(&format!("GIC: GICv{v},")).count();
            assert_eq!(named, 1, "asked for GICv{v}:\n{}", run.log);
        }
        run
    }
}

/// Whether a log line is one of Vigil's ERROR lines (an emulation anomaly
/// is reported as one).
pub fn is_error_line(line: &str) -> bool {
    line.starts_with("[cpu") && line.contains(" ERROR] ")
}

/// Every ERROR line of `log` contains one of `expected`, and each of
/// `expected` is in one: a scenario fails on any Vigil error it was not
/// written to cause.
pub fn errors_as_expected(log: &str, expected: &[&str]) -> Result<(), String> {
    let errors: Vec<&str> = log.lines().filter(|l| is_error_line(l)).collect();
    let mut why = Vec::new();
    for l in &errors {
        if !expected.iter().any(|e| l.contains(e)) {
            why.push(format!(
                "Vigil logged an error this scenario does not expect: {l}"
            ));
        }
    }
    for e in expected {
        if !errors.iter().any(|l| l.contains(e)) {
            why.push(format!("Vigil logged no error containing {e:?}"));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("\n"))
    }
}

/// Run `cmd` (which must `exec` QEMU, so killing it kills QEMU), capturing
/// stdout, and kill it at `timeout`.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Run {
    run_with_input(cmd, timeout, &[])
}

/// Console input typed once the output contains a marker.
#[derive(Clone, Debug)]
pub struct Input {
    pub after: String,
    /// Type once `after` has appeared this many times (1: first time).
    pub nth: usize,
    pub bytes: Vec<u8>,
}

/// As [`run_with_timeout`], typing each `inputs` entry on the console (the
/// command's stdin) as soon as its marker has appeared in the output, in
/// order.
pub fn run_with_input(mut cmd: Command, timeout: Duration, inputs: &[Input]) -> Run {
    let start = Instant::now();
    // Always a pipe: at the timeout the harness asks Vigil for its state
    // dump (Ctrl-A d) before it kills QEMU.
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting QEMU (is qemu-system-aarch64 installed? run scripts/setup)");
    let mut stdin = child.stdin.take();
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_w = seen.clone();
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen_w.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let mut pending = inputs.iter();
    let mut next = pending.next();
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let ending = loop {
        if let Some(status) = child.try_wait().expect("waiting for QEMU") {
            break ending_of(status);
        }
        if let (Some(inp), Some(w)) = (next, stdin.as_mut()) {
            let out = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            if out.matches(inp.after.as_str()).count() >= inp.nth.max(1) {
                use std::io::Write;
                let _ = w.write_all(&inp.bytes);
                let _ = w.flush();
                next = pending.next();
            }
        }
        if start.elapsed() >= timeout {
            // A hang says where it is: Vigil's state dump (one line per CPU
            // and vCPU), given a few seconds to be printed.
            if let Some(w) = stdin.as_mut() {
                use std::io::Write;
                let _ = w.write_all(STATE_DUMP_KEYS);
                let _ = w.flush();
                let until = Instant::now() + STATE_DUMP_WAIT;
                while Instant::now() < until && child.try_wait().ok().flatten().is_none() {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            break Ending::TimedOut;
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let _ = reader.join();
    let mut log = String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
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

/// Ctrl-A d: Vigil logs where every CPU and vCPU is.
const STATE_DUMP_KEYS: &[u8] = b"\x01d";
/// How long a timed-out run is given to print that dump.
const STATE_DUMP_WAIT: Duration = Duration::from_secs(3);

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
    fn any_unexpected_error_line_fails_and_expected_ones_must_appear() {
        let log = "[cpu0 INFO ] ok\n[cpu1 ERROR] vm a: stopped: boom\n[a] guest: ERROR] not ours\n";
        assert!(errors_as_expected(log, &["stopped: boom"]).is_ok());
        let e = errors_as_expected(log, &[]).unwrap_err();
        assert!(
            e.contains("does not expect: [cpu1 ERROR] vm a: stopped: boom"),
            "{e}"
        );
        let e = errors_as_expected("[cpu0 INFO ] ok\n", &["boom"]).unwrap_err();
        assert!(e.contains("no error containing \"boom\""), "{e}");
        assert!(errors_as_expected("[cpu0 INFO ] fine\n", &[]).is_ok());
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
    fn a_timed_out_run_asks_for_the_state_dump_first() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; head -c 2 | od -An -tx1; exec sleep 30"]);
        let r = run_with_timeout(cmd, Duration::from_millis(300));
        assert_eq!(r.ending, Ending::TimedOut);
        assert!(r.log.contains("01 64"), "{}", r.log);
    }

    #[test]
    fn input_is_typed_after_its_marker() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ready; read a; echo got $a; read b; echo got $b"]);
        let inputs = [
            Input {
                after: "ready".into(),
                nth: 1,
                bytes: b"one\n".to_vec(),
            },
            Input {
                after: "got one".into(),
                nth: 1,
                bytes: b"two\n".to_vec(),
            },
        ];
        let r = run_with_input(cmd, Duration::from_secs(10), &inputs);
        assert_eq!(r.ending, Ending::Exited(0));
        assert_eq!(r.log, "ready\ngot one\ngot two\n");
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
