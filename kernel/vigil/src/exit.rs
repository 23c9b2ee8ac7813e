//! Ending the run: QEMU semihosting exit (through `qemu-exit`), which the
//! test harness reads as the scenario's status.

use qemu_exit::QEMUExit;

const QEMU: qemu_exit::AArch64 = qemu_exit::AArch64::new();

pub fn exit_success() -> ! {
    QEMU.exit_success()
}

pub fn exit_failure() -> ! {
    QEMU.exit_failure()
}

pub fn exit(code: u32) -> ! {
    QEMU.exit(code)
}
