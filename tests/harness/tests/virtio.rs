//! The driver domain's hypervisor half (issue 13): a client VM's
//! virtio-mmio disk served by another VM through Vigil's channel function.
//! The service here is the test guest's `blk-service` (a RAM disk behind
//! the same channel, BARs and INTx that the service program in a Linux
//! VM's userspace uses); the client is Debian's unmodified Linux with its
//! own virtio_mmio and virtio_blk drivers.

use std::time::Duration;
use vigil_harness::{Ending, Guest, Qemu, Run};

fn service() -> Guest {
    Guest::test("blk-service")
        .named("svc")
        .mem_mib(128)
        .pcpus(&[2])
}

fn vigil_complaints(run: &Run) -> Vec<&str> {
    run.log
        .lines()
        .filter(|l| l.contains(" WARN ]") || l.contains(" ERROR]") || l.contains("FATAL"))
        .collect()
}

/// mke2fs, 32 MiB of files with their checksums, sync, unmount, reboot
/// (PSCI SYSTEM_RESET), e2fsck in the client finds it clean, remount and
/// every checksum verified; the client boots only once its service is
/// ready; no Vigil warning.
#[test]
fn linux_client_writes_a_filesystem_through_a_service_vm_and_reads_it_after_reboot() {
    let run = Qemu::with_guests(&[
        Guest::linux(2, "disk,poweroff").virtio_blk("svc"),
        service(),
    ])
    .timeout(Duration::from_secs(300))
    .run();
    run.check(&[
        "vm linux: virtio-blk at 0xa001000 (SPI 16), served by vm svc",
        "vm linux: virtio-blk backend ready in vm svc; starting vm linux",
        "virtio_blk virtio0: [vda] 131072 512-byte logical blocks",
        "VIGIL-INIT: disk mke2fs ok",
        "VIGIL-INIT: disk unmounted",
        "vm linux: reset: images reloaded",
        "VIGIL-INIT: disk found MANIFEST with 8 files",
        "VIGIL-INIT: disk fsck clean",
        "VIGIL-INIT: disk verify ok 8 files",
        "vm linux: powered off (PSCI SYSTEM_OFF), status 0",
        "blk-service: client gone after",
        "[svc] guest: blk-service: PASS",
    ])
    .unwrap();
    let wrote: u64 = run
        .lines_with("VIGIL-INIT: disk wrote ")
        .next()
        .and_then(|l| l.split_whitespace().rev().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size written:\n{}", run.log));
    assert!(wrote >= 32 * 1024, "wrote {wrote} KiB");
    assert_eq!(run.lines_with("VIGIL-INIT: disk sum ").count(), 8);
    // The client's first line comes after the service went ready.
    let ready = run.log.find("backend ready in vm svc").unwrap();
    let first = run.log.find("[linux]").unwrap();
    assert!(ready < first, "the client ran before its service was ready");
    let c = vigil_complaints(&run);
    assert!(c.is_empty(), "{}\n--- log ---\n{}", c.join("\n"), run.log);
}

/// A service that stops before it is ready takes its waiting client with
/// it (instead of leaving it waiting forever).
#[test]
fn a_service_that_stops_before_ready_stops_its_client() {
    let run = Qemu::with_guests(&[
        Guest::test("hello").named("client").virtio_blk("svc"),
        Guest::test("hello").named("svc"),
    ])
    .expect_error("vm client: stopped: its virtio-blk backend vm svc stopped before it was ready")
    .run();
    assert_eq!(run.ending, Ending::Exited(2), "{}", run.log);
    assert_eq!(
        run.lines_with(
            "vm client: stopped: its virtio-blk backend vm svc stopped before it was ready"
        )
        .count(),
        1,
        "{}",
        run.log
    );
    assert!(
        run.lines_with("[client]").next().is_none(),
        "the client ran:\n{}",
        run.log
    );
}

#[test]
fn a_backend_that_is_no_vm_is_one_clear_error() {
    let run = Qemu::with_guests(&[Guest::test("hello").virtio_blk("nobody")]).run();
    assert_eq!(run.ending, Ending::Exited(1), "{}", run.log);
    assert_eq!(
        run.lines_with("boot: guest description: VM hello: vigil,virtio-blk must name another VM")
            .count(),
        1,
        "{}",
        run.log
    );
}

/// A fresh sparse disk image of `mib` MiB.
fn disk_image(name: &str, mib: u64) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vigil-{name}-{}.img", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path
}

/// QEMU arguments for a virtio-blk-pci backed by `image` (the service VM
/// gets it with the PCIe bridge), drive `disk{i}`.
fn pci_disk(image: &std::path::Path, i: usize) -> [String; 4] {
    [
        "-drive".into(),
        format!("file={},if=none,format=raw,id=disk{i}", image.display()),
        "-device".into(),
        format!("virtio-blk-pci-non-transitional,drive=disk{i}"),
    ]
}

/// `debugfs -R CMD image`: its stdout (e2fsprogs, from scripts/setup).
fn debugfs(image: &std::path::Path, cmd: &str) -> Vec<u8> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .expect("running debugfs (e2fsprogs; scripts/setup installs it)");
    assert!(out.status.success(), "debugfs -R {cmd:?} failed");
    out.stdout
}

/// sha256sum(1) of `data`.
fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The driver domain as a user runs it (issue 13): the service program in
/// the userspace of a Debian service VM serves that VM's own disk (a
/// virtio-blk-pci backed by a host file) to a Debian client through
/// Vigil's channel. The client writes a filesystem, reboots and verifies
/// it; then resets in the middle of a burst of raw writes past the
/// filesystem (sysrq b) and, on the boot after, finds the files intact
/// and no write from before the reset landing late. On the host, e2fsck
/// finds the image clean and every file's sha256 matches what the client
/// wrote.
#[test]
fn the_service_program_serves_its_own_disk_to_a_linux_client() {
    let image = disk_image("driver-domain", 64);
    let run = Qemu::with_guests(&[
        Guest::linux(2, "disk,burst,poweroff").virtio_blk("service"),
        Guest::linux_service("service"),
    ])
    .qemu_args(&pci_disk(&image, 0))
    .timeout(Duration::from_secs(400))
    .run();
    run.check(&[
        "vm linux: virtio-blk backend ready in vm service; starting vm linux",
        "VIGIL-INIT: service starting on /dev/vda",
        "VIGIL-INIT: disk mke2fs ok",
        "VIGIL-INIT: disk unmounted",
        "vm linux: reset: images reloaded",
        "VIGIL-INIT: disk fsck clean",
        "VIGIL-INIT: disk verify ok 8 files",
        "VIGIL-INIT: burst reset",
        "VIGIL-INIT: burst no late writes",
        "vm linux: powered off (PSCI SYSTEM_OFF), status 0",
        "VIGIL-INIT: service exited with status 0",
        "vm service: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
    // Three boots: the filesystem checked clean and the files verified on
    // the second and on the third, the boot after the reset mid-burst.
    assert_eq!(run.lines_with("VIGIL-INIT: disk fsck clean").count(), 2);
    assert_eq!(
        run.lines_with("VIGIL-INIT: disk verify ok 8 files").count(),
        2
    );
    assert_eq!(
        run.lines_with("vm linux: reset: images reloaded").count(),
        2
    );
    let c = vigil_complaints(&run);
    assert!(c.is_empty(), "{}\n--- log ---\n{}", c.join("\n"), run.log);
    // On the host: the image holds that filesystem and those files.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-n", "-f"])
        .arg(&image)
        .output()
        .expect("running e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -n: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let sums: Vec<&str> = run.lines_with("VIGIL-INIT: disk sum ").collect();
    assert_eq!(sums.len(), 8, "{}", run.log);
    for l in sums {
        let mut w = l.rsplit(' ');
        let (sum, name) = (w.next().unwrap(), w.next().unwrap());
        let data = debugfs(&image, &format!("cat /{name}"));
        assert_eq!(data.len(), 4 << 20, "{name}");
        assert_eq!(sha256(&data), sum, "{name} on the host");
    }
    let _ = std::fs::remove_file(&image);
}

/// The service program killed (kill -9) while its client writes: the
/// client's I/O waits, its kernel lives on (a heartbeat) and powers off;
/// the service VM's kernel and Vigil see nothing wrong.
#[test]
fn a_killed_service_leaves_its_client_waiting_and_nothing_faults() {
    let image = disk_image("dead-service", 64);
    let run = Qemu::with_guests(&[
        Guest::linux(2, "dead-service").virtio_blk("service"),
        Guest::linux_service("service")
            .bootargs("console=ttyAMA0 vigil.init=service-kill,poweroff"),
    ])
    .qemu_args(&pci_disk(&image, 0))
    .timeout(Duration::from_secs(200))
    .run();
    run.check(&[
        "vm linux: virtio-blk backend ready in vm service; starting vm linux",
        "VIGIL-INIT: service killing after",
        "VIGIL-INIT: service killed, status 137",
        "vm service: powered off (PSCI SYSTEM_OFF), status 0",
        "VIGIL-INIT: alive 15",
        "VIGIL-INIT: powering off with I/O pending",
        "vm linux: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
    // It was serving when it was killed.
    let served = run
        .log
        .find("vigil-service: client DRIVER_OK")
        .unwrap_or(usize::MAX);
    let killed = run.log.find("VIGIL-INIT: service killed").unwrap();
    assert!(served < killed, "killed before serving:\n{}", run.log);
    let faults: Vec<&str> = run
        .log
        .lines()
        .filter(|l| {
            [
                "Oops",
                "BUG:",
                "Unable to handle",
                "Internal error",
                "Kernel panic",
            ]
            .iter()
            .any(|f| l.contains(f))
        })
        .collect();
    assert!(
        faults.is_empty(),
        "{}\n--- log ---\n{}",
        faults.join("\n"),
        run.log
    );
    let c = vigil_complaints(&run);
    assert!(c.is_empty(), "{}\n--- log ---\n{}", c.join("\n"), run.log);
    let _ = std::fs::remove_file(&image);
}

/// A hostile client (random descriptors, avail.idx jumps, random transport
/// writes, 100,000 notifications) and a well-behaved Linux client served by
/// one service VM, each on a disk of its own: the service refuses what it
/// must and survives, the good client's filesystem and checksums hold
/// through its reboot, and both service programs exit cleanly when their
/// clients are gone; Vigil logs no error (its rate-limited warnings about
/// the hostile client's register misuse are the point).
#[test]
fn a_hostile_client_next_to_a_good_one_cannot_take_the_service_down() {
    let (good, bad) = (disk_image("good", 64), disk_image("hostile", 64));
    let mut q = Qemu::with_guests(&[
        Guest::linux(2, "disk,poweroff").virtio_blk("service"),
        Guest::test("virtio-hostile")
            .named("hostile")
            .pcpus(&[2])
            .virtio_blk("service"),
        Guest::linux_service("service"),
    ]);
    for (i, img) in [&good, &bad].iter().enumerate() {
        q = q.qemu_args(&pci_disk(img, i));
    }
    let run = q.timeout(Duration::from_secs(400)).run();
    run.check(&[
        "served by vm service through its channel 0",
        "served by vm service through its channel 1",
        "VIGIL-INIT: service starting on /dev/vda for channel 0",
        "VIGIL-INIT: service starting on /dev/vdb for channel 1",
        "virtio-hostile: 100000 notifications",
        "[hostile] guest: virtio-hostile: PASS",
        "VIGIL-INIT: disk verify ok 8 files",
        "vm linux: powered off (PSCI SYSTEM_OFF), status 0",
        "VIGIL-INIT: service exited with status 0 (channel 0)",
        "VIGIL-INIT: service exited with status 0 (channel 1)",
        "vm service: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
    // The hostile client's service looked at its chains (refused them)
    // rather than giving up at the first bad ring: NEEDS_RESET, and the
    // client re-initialised.
    let refused: u64 = run
        .lines_with("vigil-service: summary: ")
        .filter_map(|l| l.split(" requests (").nth(1))
        .filter_map(|r| r.split(' ').next())
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or_else(|| panic!("no summary:\n{}", run.log));
    // How many it got to see depends on how the two were scheduled (tens
    // of thousands, or a few thousand on a loaded host): only that it saw
    // and refused some is certain.
    assert!(refused > 0, "no chain refused:\n{}", run.log);
    let bad_lines: Vec<&str> = run
        .log
        .lines()
        .filter(|l| l.contains(" ERROR]") || l.contains("FATAL") || l.contains("Oops"))
        .collect();
    assert!(
        bad_lines.is_empty(),
        "{}\n--- log ---\n{}",
        bad_lines.join("\n"),
        run.log
    );
    // On the host: the good client's filesystem.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-n", "-f"])
        .arg(&good)
        .output()
        .expect("running e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -n: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    for l in run.lines_with("VIGIL-INIT: disk sum ") {
        let mut w = l.rsplit(' ');
        let (sum, name) = (w.next().unwrap(), w.next().unwrap());
        assert_eq!(
            sha256(&debugfs(&good, &format!("cat /{name}"))),
            sum,
            "{name}"
        );
    }
    let _ = std::fs::remove_file(&good);
    let _ = std::fs::remove_file(&bad);
}
