//! The fuzz targets and their seeds. Each reads its input as a program
//! ([`Input`]) and panics on anything Vigil must never do.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use vigil_vgic::sim::SimCpu;
use vigil_vgic::{GuestMemory, MemError, RamWindow, Vgic, VgicConfig, GICR_STRIDE};
use vigil_vits::{Command, Vits, VitsConfig};
use vigil_vm::esr::{Esr, MmioAccess};

use crate::Input;

/// A target: name, entry point, seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "vits",
        run: vits,
        seeds: vits_seeds,
    },
    Target {
        name: "vgic",
        run: vgic,
        seeds: vgic_seeds,
    },
    Target {
        name: "esr",
        run: esr,
        seeds: esr_seeds,
    },
    Target {
        name: "dtb",
        run: dtb,
        seeds: no_seeds,
    },
    Target {
        name: "image",
        run: image,
        seeds: no_seeds,
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn no_seeds() -> Vec<Vec<u8>> {
    Vec::new()
}

// ---------------------------------------------------------------------------
// A guest's RAM, as the vGIC and vITS see it: 1 MiB at 0x4000_0000.

const RAM: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 0x10_0000;
const CMDQ: u64 = RAM;
const CMDQ_SIZE: u64 = 0x1_0000;
const DEV_TABLE: u64 = RAM + 0x1_0000;
const COLL_TABLE: u64 = RAM + 0x2_0000;
const PROP_TABLE: u64 = RAM + 0x3_0000;
const PEND_TABLE: u64 = RAM + 0x5_0000;
const ITT_BASE: u64 = RAM + 0xa_0000;
const VALID: u64 = 1 << 63;

/// Accessed only atomically (`vigil_guestmem`), as Vigil accesses a
/// guest's RAM, so the vITS may read it through windows.
struct Ram {
    words: Box<[AtomicU64]>,
    /// Whether `window` gives windows (the input picks; without, every
    /// read goes through `read`).
    windows: bool,
}

impl Ram {
    fn new(windows: bool) -> Self {
        Self {
            words: (0..RAM_SIZE / 8).map(|_| AtomicU64::new(0)).collect(),
            windows,
        }
    }

    fn at(&self, gpa: u64) -> *mut u8 {
        let base: *const u8 = self.words.as_ptr().cast();
        base.wrapping_add((gpa - RAM) as usize) as *mut u8
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        if self.is_ram(gpa, bytes.len() as u64) {
            // SAFETY: inside `words` (checked), only accessed atomically.
            unsafe { vigil_guestmem::write(self.at(gpa), bytes) };
        }
    }
}

impl GuestMemory for Ram {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        gpa >= RAM && gpa.checked_add(len).is_some_and(|e| e <= RAM + RAM_SIZE)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if !self.is_ram(gpa, buf.len() as u64) {
            return Err(MemError::OutOfRam);
        }
        // SAFETY: inside `words` (checked), only accessed atomically.
        unsafe { vigil_guestmem::read(self.at(gpa), buf) };
        Ok(())
    }

    fn window(&self, gpa: u64, len: u64) -> Option<RamWindow<'_>> {
        if !self.windows || !self.is_ram(gpa, len) {
            return None;
        }
        // SAFETY: as in `read`, for as long as `self` is borrowed.
        Some(unsafe { RamWindow::new(self.at(gpa), len as usize) })
    }
}

/// A register access width the guest can make.
fn width(b: u8) -> u8 {
    [1, 2, 4, 8][usize::from(b & 3)]
}

/// One guest vCPU's entry and exit with the list registers (4, as QEMU's),
/// taking and completing what it can.
fn cycle(g: &Vgic, cpus: &mut [SimCpu], v: usize, acks: u8) {
    let cpu = &mut cpus[v];
    cpu.enter(g);
    for _ in 0..acks % 4 {
        if let Some(intid) = cpu.ack() {
            cpu.eoi(intid);
        }
    }
    cpu.exit(g);
}

fn assert_sound(g: &Vgic) {
    let anomalies = g.lock().anomalies();
    assert_eq!(anomalies, 0, "vGIC anomalies: an emulation bug");
}

// ---------------------------------------------------------------------------
// vits: the command queue, the registers and the tables of a vITS, with
// the vGIC and list registers behind it.

fn vits(data: &[u8]) {
    let mut inp = Input::new(data);
    let n = 1 + usize::from(inp.u8() % 4);
    let vgic = Arc::new(Vgic::new(&VgicConfig::simple(n)));
    let slice = match inp.u8() % 4 {
        0 => None,
        k => Some(u32::from(k) * 7),
    };
    let its = Vits::new(
        vgic.clone(),
        VitsConfig {
            max_devices: 64,
            max_mappings: 256,
            slice,
            ..VitsConfig::default()
        },
    );
    let setup = inp.u8();
    // Bit 1: RAM read byte by byte, not through windows.
    let ram = Ram::new(setup & 2 == 0);
    let mut cpus: Vec<SimCpu> = (0..n).map(|v| SimCpu::new(v, 4)).collect();
    // As a guest driver sets it up (valid flat tables, LPIs on) unless the
    // input's first byte says to start bare.
    if setup & 1 == 0 {
        its.mmio_write(0x100, 8, VALID | DEV_TABLE, &ram);
        its.mmio_write(0x108, 8, VALID | COLL_TABLE, &ram);
        its.mmio_write(0x80, 8, VALID | CMDQ | (CMDQ_SIZE / 4096 - 1), &ram);
        its.mmio_write(0, 4, 1, &ram);
        vgic.gicd_write(0, 0, 4, 0b11);
        ram.write(PROP_TABLE, &vec![0xa1; 0x1_0000 - 0x2000]);
        vgic.gicr_write(0x70, 8, PROP_TABLE | 15, &ram);
        for v in 0..n as u64 {
            vgic.gicr_write(v * GICR_STRIDE + 0x78, 8, PEND_TABLE + v * 0x1_0000, &ram);
            vgic.gicr_write(v * GICR_STRIDE, 4, 1, &ram);
        }
    }
    let mut ops = 0;
    while !inp.is_empty() && ops < 512 {
        ops += 1;
        match inp.u8() % 8 {
            // A command, queued and published.
            0 | 1 => {
                let w = its.mmio_read(0x88, 8) % CMDQ_SIZE;
                ram.write(CMDQ + w, inp.bytes(32));
                its.mmio_write(0x88, 8, (w + 32) % CMDQ_SIZE, &ram);
            }
            // A register access anywhere in the two frames.
            2 => {
                let off = u64::from(inp.u32()) % 0x2_0000;
                let len = width(inp.u8());
                let value = inp.u64();
                its.mmio_write(off, len, value, &ram);
            }
            3 => {
                let off = u64::from(inp.u32()) % 0x2_0000;
                let len = width(inp.u8());
                its.mmio_read(off, len);
            }
            // The guest rewrites its tables (the vITS reads them only).
            4 => {
                let at = RAM + u64::from(inp.u32()) % RAM_SIZE;
                ram.write(at, inp.bytes(8));
            }
            // A device's MSI, and the rest of a sliced queue.
            5 => {
                let _ = its.translate(inp.u32() % 128, inp.u32() % 64);
                its.resume(&ram);
            }
            // A redistributor register (PROPBASER, PENDBASER, CTLR...).
            6 => {
                let off = u64::from(inp.u32()) % (n as u64 * GICR_STRIDE);
                let len = width(inp.u8());
                vgic.gicr_write(off, len, inp.u64(), &ram);
            }
            // A vCPU runs.
            _ => {
                let v = usize::from(inp.u8()) % n;
                cycle(&vgic, &mut cpus, v, inp.u8());
            }
        }
    }
    its.reset();
    assert_sound(&vgic);
}

fn command(c: Command) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&c.to_bytes());
    v
}

fn vits_seeds() -> Vec<Vec<u8>> {
    let mut s = vec![2, 0, 0];
    s.extend(command(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    }));
    s.extend(command(Command::Mapd {
        device: 1,
        size: 4,
        itt_addr: ITT_BASE,
        valid: true,
    }));
    s.extend(command(Command::Mapti {
        device: 1,
        event: 2,
        intid: 8192 + 2,
        icid: 0,
    }));
    s.extend(command(Command::Int {
        device: 1,
        event: 2,
    }));
    s.extend([7, 0, 3]);
    s.extend(command(Command::Discard {
        device: 1,
        event: 2,
    }));
    s.extend([5, 1, 0, 0, 0, 2, 0, 0, 0, 7, 1, 3]);
    // The same with RAM read byte by byte (no windows).
    let mut bytewise = s.clone();
    bytewise[2] = 2;
    vec![
        s,
        bytewise,
        vec![1, 1, 1, 2, 0x88, 0, 0, 0, 3, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
    ]
}

// ---------------------------------------------------------------------------
// vgic: the distributor and redistributors' registers, lines, SGIs and the
// list-register cycle.

fn vgic(data: &[u8]) {
    let mut inp = Input::new(data);
    let n = 1 + usize::from(inp.u8() % 4);
    let g = Vgic::new(&VgicConfig::simple(n));
    let mut cpus: Vec<SimCpu> = (0..n).map(|v| SimCpu::new(v, 4)).collect();
    let ram = Ram::new(true);
    let mut ops = 0;
    while !inp.is_empty() && ops < 512 {
        ops += 1;
        let v = usize::from(inp.u8()) % n;
        match inp.u8() % 8 {
            0 => {
                let off = u64::from(inp.u16());
                let len = width(inp.u8());
                g.gicd_write(v, off, len, inp.u64());
            }
            1 => {
                let off = u64::from(inp.u16());
                g.gicd_read(v, off, width(inp.u8()));
            }
            2 => {
                let off = u64::from(inp.u32()) % (n as u64 * GICR_STRIDE + 0x100);
                let len = width(inp.u8());
                g.gicr_write(off, len, inp.u64(), &ram);
            }
            3 => {
                let off = u64::from(inp.u32()) % (n as u64 * GICR_STRIDE + 0x100);
                g.gicr_read(off, width(inp.u8()));
            }
            4 => {
                let intid = u32::from(inp.u16()) % 1100;
                g.set_line(v, intid, inp.u8() & 1 != 0);
            }
            5 => {
                let intid = u32::from(inp.u16()) % 1100;
                g.pulse(v, intid);
            }
            6 => {
                let value = inp.u64();
                g.send_sgi(v, value, inp.u8() & 1 != 0);
            }
            _ => cycle(&g, &mut cpus, v, inp.u8()),
        }
    }
    assert_sound(&g);
}

fn vgic_seeds() -> Vec<Vec<u8>> {
    vec![
        // Enable groups, enable SPI 40, set it pending, run vCPU 0.
        vec![
            1, 0, 0, 0, 0, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x01, 2, 1, 0, 0, 0, 0, 0, 0, 0,
            0, 4, 40, 0, 1, 0, 7, 3,
        ],
        // An SGI to everyone else, then both vCPUs run.
        vec![1, 0, 6, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 7, 3, 1, 7, 3],
    ]
}

// ---------------------------------------------------------------------------
// esr: the data-abort syndrome decoder behind every MMIO trap.

fn esr(data: &[u8]) {
    let mut inp = Input::new(data);
    while !inp.is_empty() {
        let raw = inp.u64();
        let reg = inp.u64();
        let Ok(a) = MmioAccess::decode(Esr(raw)) else {
            continue;
        };
        assert!(matches!(a.width, 1 | 2 | 4 | 8));
        assert!(a.reg < 32);
        let stored = a.store_value(reg);
        assert_eq!(stored & !a.mask(), 0, "a store wider than its access");
        let loaded = a.load_value(reg);
        if !a.sf {
            assert_eq!(loaded >> 32, 0, "a W register's upper half set");
        }
        if !a.sign_extend {
            assert_eq!(loaded & !a.mask(), 0, "a load wider than its access");
        }
    }
}

fn esr_seeds() -> Vec<Vec<u8>> {
    // EC 0x24 with ISV, each SAS, SSE, SF, WnR.
    let mut s = Vec::new();
    for iss in [0x0100_0000u64, 0x01c0_8040, 0x0161_0000, 0x0080_0000] {
        s.extend_from_slice(&((0x24u64 << 26) | iss).to_le_bytes());
        s.extend_from_slice(&u64::MAX.to_le_bytes());
    }
    vec![s]
}

// ---------------------------------------------------------------------------
// dtb: QEMU's device tree as Vigil reads it at boot, including the VM
// descriptions a user writes into /chosen (scripts/qemu --guest).

fn dtb(data: &[u8]) {
    let _ = vigil_platform::dtb_total_size(data);
    if let Ok(p) = vigil_platform::discover(data) {
        // What boot then derives from it.
        let _ = p.cpus.len();
    }
    let _ = vigil_platform::domains(data);
}

// ---------------------------------------------------------------------------
// image: a guest kernel as a user gives it (Linux Image, ELF or raw).

fn image(data: &[u8]) {
    let _ = vigil_vm::image::inspect(data);
    let _ = vigil_vm::elf::parse(data, RAM, 0x800_0000);
}
