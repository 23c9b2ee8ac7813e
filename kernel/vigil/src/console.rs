//! The hypervisor console: a PL011 UART, shared by all CPUs.
//!
//! A line is written under a lock that records its owner, so that a CPU
//! that faults or panics while printing can still print its report instead
//! of deadlocking on itself.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! {u32,
    /// Flag register (PL011 TRM 3.3.3).
    FR [
        TXFF OFFSET(5) NUMBITS(1) [],
        RXFE OFFSET(4) NUMBITS(1) [],
        BUSY OFFSET(3) NUMBITS(1) [],
    ],
    /// Control register (PL011 TRM 3.3.8).
    CR [
        RXE OFFSET(9) NUMBITS(1) [],
        TXE OFFSET(8) NUMBITS(1) [],
        UARTEN OFFSET(0) NUMBITS(1) [],
    ],
    /// Line control (PL011 TRM 3.3.7).
    LCR_H [
        WLEN OFFSET(5) NUMBITS(2) [EightBit = 3],
        FEN OFFSET(4) NUMBITS(1) [],
    ],
}

register_structs! {
    Pl011Regs {
        (0x00 => dr: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => fr: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        (0x2c => lcr_h: WriteOnly<u32, LCR_H::Register>),
        (0x30 => cr: WriteOnly<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x38 => imsc: WriteOnly<u32, IMSC::Register>),
        (0x3c => _reserved3),
        (0x44 => icr: WriteOnly<u32>),
        (0x48 => @END),
    }
}

/// Base address of the console PL011 (0: none yet).
static UART_BASE: AtomicU64 = AtomicU64::new(0);
/// CPU index + 1 of the lock holder, 0 when free.
static OWNER: AtomicUsize = AtomicUsize::new(0);
/// VM id + 1 of the guest whose unfinished line is on the terminal; 0 when
/// the cursor is at the start of a line.
static LINE_OWNER: AtomicUsize = AtomicUsize::new(0);

fn regs() -> Option<&'static Pl011Regs> {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return None;
    }
    // SAFETY: `base` is a PL011 register block, mapped as device memory
    // (identity) for the whole life of the hypervisor; tock-registers
    // accesses it with volatile reads and writes only.
    Some(unsafe { &*(base as *const Pl011Regs) })
}

/// Use the PL011 at `base` as the console. Safe to call again (the early
/// console and the device-tree one are the same UART on QEMU).
pub fn init(base: u64) {
    UART_BASE.store(base, Ordering::Release);
    if let Some(r) = regs() {
        r.cr.set(0);
        r.icr.set(0x7ff);
        r.lcr_h.write(LCR_H::WLEN::EightBit + LCR_H::FEN::SET);
        r.cr.write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }
}

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let Some(r) = regs() else { return Ok(()) };
        for b in s.bytes() {
            if b == b'\n' {
                put(r, b'\r');
            }
            put(r, b);
        }
        Ok(())
    }
}

fn put(r: &Pl011Regs, b: u8) {
    while r.fr.is_set(FR::TXFF) {
        core::hint::spin_loop();
    }
    r.dr.set(b as u32);
}

/// Run `f` with the console held by this CPU. Re-entry from the same CPU
/// (an exception while printing) proceeds without waiting.
fn with_console(f: impl FnOnce(&mut Uart)) {
    let me = crate::arch::cpu_index() + 1;
    let nested = OWNER.load(Ordering::Relaxed) == me;
    if !nested {
        while OWNER
            .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
    }
    f(&mut Uart);
    if !nested {
        OWNER.store(0, Ordering::Release);
    }
}

/// Print one line, tagged with the CPU.
pub fn println_tagged(level: &str, args: fmt::Arguments<'_>) {
    with_console(|u| {
        if LINE_OWNER.swap(0, Ordering::Relaxed) != 0 {
            let _ = u.write_str("\n");
        }
        let _ = writeln!(u, "[cpu{} {:5}] {}", crate::arch::cpu_index(), level, args);
    });
}

/// Per VM, the line being written while several VMs share the console.
struct LineBuf {
    bytes: [u8; 256],
    len: usize,
}

static LINES: [spin::Mutex<LineBuf>; vigil_platform::MAX_VMS] = [const {
    spin::Mutex::new(LineBuf {
        bytes: [0; 256],
        len: 0,
    })
}; vigil_platform::MAX_VMS];

/// What the console knows of the VMs, for its tags: how many there are and
/// each one's name. VMs live in `vm`, a room above this one, which
/// registers them at boot ([`set_vm_names`]).
struct VmNames {
    count: fn() -> usize,
    name: fn(usize) -> &'static str,
}

static VM_NAMES: spin::Once<VmNames> = spin::Once::new();

pub fn set_vm_names(count: fn() -> usize, name: fn(usize) -> &'static str) {
    VM_NAMES.call_once(|| VmNames { count, name });
}

fn vm_count() -> usize {
    VM_NAMES.get().map_or(0, |n| (n.count)())
}

/// The name of VM `vm`, as its console lines are tagged.
pub fn vm_name(vm: usize) -> &'static str {
    VM_NAMES.get().map_or("vm?", |n| (n.name)(vm))
}

/// A byte a guest wrote to its UART. Each line is tagged with the VM's
/// name. With one VM, bytes go out at once (so a shell prompt shows before
/// its newline); with several, each VM's output is collected a line at a
/// time so lines never interleave.
pub fn guest_putc(vm: usize, byte: u8) {
    if vm_count() > 1 {
        let mut line = LINES[vm % LINES.len()].lock();
        if byte != b'\n' && byte != b'\r' {
            let n = line.len;
            line.bytes[n] = byte;
            line.len += 1;
        }
        if byte == b'\n' || line.len == line.bytes.len() {
            let text =
                core::str::from_utf8(&line.bytes[..line.len]).unwrap_or("<non-UTF-8 output>");
            with_console(|u| {
                if LINE_OWNER.swap(0, Ordering::Relaxed) != 0 {
                    let _ = u.write_str("\n");
                }
                let _ = writeln!(u, "[{}] {}", vm_name(vm), text);
            });
            line.len = 0;
        }
        return;
    }
    with_console(|u| {
        let owner = LINE_OWNER.load(Ordering::Relaxed);
        if owner != vm + 1 {
            if owner != 0 {
                let _ = u.write_str("\n");
            }
            let _ = write!(u, "[{}] ", vm_name(vm));
        }
        if byte == b'\n' {
            let _ = u.write_str("\n");
            LINE_OWNER.store(0, Ordering::Relaxed);
        } else {
            if let Some(r) = regs() {
                put(r, byte);
            }
            LINE_OWNER.store(vm + 1, Ordering::Relaxed);
        }
    });
}

register_bitfields! {u32,
    IMSC [
        RTIM OFFSET(6) NUMBITS(1) [],
        RXIM OFFSET(4) NUMBITS(1) [],
    ],
}

/// Interrupt when bytes arrive (receive and receive-timeout), or not:
/// while the guest's receive FIFO is full, input waits in the UART (and
/// behind it, in QEMU) instead of being dropped.
pub fn set_rx_interrupt(on: bool) {
    if let Some(r) = regs() {
        if on {
            r.imsc.write(IMSC::RXIM::SET + IMSC::RTIM::SET);
        } else {
            r.imsc.set(0);
        }
    }
}

/// Bytes waiting in the receive FIFO, one at a time.
pub fn try_read() -> Option<u8> {
    let r = regs()?;
    if r.fr.is_set(FR::RXFE) {
        None
    } else {
        Some(r.dr.get() as u8)
    }
}

/// Print a line whatever state the console lock is in: a CPU that died
/// holding it must not silence the report of why.
pub fn emergency_println(args: fmt::Arguments<'_>) {
    let me = crate::arch::cpu_index() + 1;
    // Wait a bounded time for another CPU to finish its line.
    let acquired = crate::arch::wait_until(100, || {
        OWNER
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            || OWNER.load(Ordering::Relaxed) == me
    });
    let _ = writeln!(Uart, "[cpu{} FATAL] {}", me - 1, args);
    if acquired {
        OWNER.store(0, Ordering::Release);
    }
}
