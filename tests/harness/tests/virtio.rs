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
/// (PSCI SYSTEM_RESET), remount and every checksum verified; the client
/// boots only once its service is ready; no Vigil warning.
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
