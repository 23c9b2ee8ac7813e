//! Platform discovery: what machine Vigil is running on, read from the
//! flattened device tree the firmware (here QEMU) leaves in memory.
//!
//! This crate is hardware-independent so the parsing is tested on the host
//! against device trees built in the tests; the kernel only hands it a byte
//! slice.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod bootargs;
mod domains;
pub mod pcie;

pub use bootargs::BootArgs;
pub use domains::{domains, for_each_domain, DomainConfig, DomainError, MAX_VMS};

use core::fmt;

/// Most CPUs Vigil manages. QEMU's `virt` board with GICv3 allows more, but
/// per-CPU stacks are reserved statically for this many.
pub const MAX_CPUS: usize = 8;

/// A physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub size: u64,
}

impl Region {
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }

    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }
}

/// How PSCI calls reach the firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    Smc,
    Hvc,
}

/// Fixed-capacity list of CPU MPIDR affinity values, in device-tree order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuList {
    mpidr: [u64; MAX_CPUS],
    len: usize,
}

impl CpuList {
    pub const fn new() -> Self {
        Self {
            mpidr: [0; MAX_CPUS],
            len: 0,
        }
    }

    fn push(&mut self, mpidr: u64) -> Result<(), Error> {
        if self.len == MAX_CPUS {
            return Err(Error::TooManyCpus);
        }
        self.mpidr[self.len] = mpidr;
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u64] {
        &self.mpidr[..self.len]
    }

    /// Logical index of the CPU whose MPIDR affinity fields equal `mpidr`'s.
    pub fn index_of(&self, mpidr: u64) -> Option<usize> {
        let want = mpidr & MPIDR_AFFINITY_MASK;
        self.as_slice()
            .iter()
            .position(|&m| m & MPIDR_AFFINITY_MASK == want)
    }
}

impl Default for CpuList {
    fn default() -> Self {
        Self::new()
    }
}

/// Aff3 (bits 39:32) and Aff2..Aff0 (bits 23:0) of MPIDR_EL1 (Arm ARM D23.2).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// The GICv3 as the device tree describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicInfo {
    pub gicd: Region,
    /// The first redistributor region (QEMU `virt` has one contiguous region).
    pub gicr: Region,
    /// The ITS control frame and translation frame (128 KiB), when present.
    pub its: Option<Region>,
}

/// An SMMUv3 (`arm,smmu-v3`): its registers and its wired interrupts as
/// INTIDs (SPI number + 32), by `interrupt-names`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuInfo {
    pub regs: Region,
    pub eventq_irq: Option<u32>,
    pub gerror_irq: Option<u32>,
}

/// Architected timer interrupts, as INTIDs (PPI number + 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerIrqs {
    pub phys_secure: u32,
    pub phys_nonsecure: u32,
    pub virt: u32,
    /// The EL2 physical timer (CNTHP).
    pub hyp: u32,
}

/// Everything Vigil needs to know about the machine at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform<'a> {
    pub memory: Region,
    pub cpus: CpuList,
    pub gic: GicInfo,
    pub uart: Region,
    /// The UART's interrupt as an INTID (SPI number + 32), if described.
    pub uart_irq: Option<u32>,
    pub psci: Option<PsciConduit>,
    pub timer: TimerIrqs,
    /// The PCIe host bridge, for passthrough.
    pub pcie: Option<pcie::PcieHost<'a>>,
    /// The SMMUv3 the PCIe bridge's `iommu-map` names, if any.
    pub smmu: Option<SmmuInfo>,
    /// The host's real-time clock (`arm,pl031`), read for VMs' clocks.
    pub rtc: Option<Region>,
    pub bootargs: &'a str,
}

/// Why the device tree could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not a flattened device tree (bad magic, truncated, bad version).
    BadDtb,
    NoMemory,
    NoCpus,
    TooManyCpus,
    NoGicV3,
    MissingReg(&'static str),
    NoUart,
    BadPsciMethod,
    /// No arm,armv8-timer node with four PPIs.
    NoTimer,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadDtb => write!(f, "no valid flattened device tree"),
            Error::NoMemory => write!(f, "device tree has no /memory region"),
            Error::NoCpus => write!(f, "device tree has no CPUs under /cpus"),
            Error::TooManyCpus => write!(f, "more than {MAX_CPUS} CPUs in the device tree"),
            Error::NoGicV3 => write!(f, "no arm,gic-v3 interrupt controller in the device tree"),
            Error::MissingReg(what) => write!(f, "{what} node has no usable reg property"),
            Error::NoUart => write!(f, "no arm,pl011 UART in the device tree"),
            Error::BadPsciMethod => write!(f, "/psci method is neither smc nor hvc"),
            Error::NoTimer => write!(f, "no arm,armv8-timer node with four PPIs"),
        }
    }
}

/// Read the nth `reg` entry of a node.
fn reg_n(node: fdt::node::FdtNode<'_, '_>, n: usize, what: &'static str) -> Result<Region, Error> {
    let r = node
        .reg()
        .and_then(|mut it| it.nth(n))
        .ok_or(Error::MissingReg(what))?;
    let size = r.size.ok_or(Error::MissingReg(what))? as u64;
    Ok(Region::new(r.starting_address as u64, size))
}

/// The node at `path` ("/a/b@1"; a name without a unit address matches
/// one with). Walks children itself: fdt 0.1's `find_node` misses nodes
/// in trees recompiled by dtc (seen with QEMU's tree after `dtc -I dts`).
pub(crate) fn find_path<'b, 'a>(
    fdt: &'b fdt::Fdt<'a>,
    path: &str,
) -> Option<fdt::node::FdtNode<'b, 'a>> {
    let mut node = fdt.find_node("/")?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        node = node.children().find(|c| {
            c.name == part || (!part.contains('@') && c.name.split('@').next() == Some(part))
        })?;
    }
    Some(node)
}

/// A `reg` value of one or two cells (a CPU's MPIDR).
fn cells_value(raw: &[u8]) -> Option<u64> {
    match raw.len() {
        4 => Some(u32::from_be_bytes(raw.try_into().ok()?) as u64),
        8 => Some(u64::from_be_bytes(raw.try_into().ok()?)),
        _ => None,
    }
}

/// Discover the platform from a device tree blob.
pub fn discover(dtb: &[u8]) -> Result<Platform<'_>, Error> {
    let fdt = fdt::Fdt::new(dtb).map_err(|_| Error::BadDtb)?;

    let memory = find_path(&fdt, "/memory")
        .and_then(|n| n.reg())
        .and_then(|mut regs| {
            regs.find_map(|r| {
                r.size
                    .map(|s| Region::new(r.starting_address as u64, s as u64))
            })
        })
        .ok_or(Error::NoMemory)?;

    let cpus_node = find_path(&fdt, "/cpus").ok_or(Error::NoCpus)?;
    let mut cpus = CpuList::new();
    for cpu in cpus_node
        .children()
        .filter(|c| c.name.split('@').next() == Some("cpu"))
    {
        if let Some(id) = cpu.property("reg").and_then(|p| cells_value(p.value)) {
            cpus.push(id)?;
        }
    }
    if cpus.is_empty() {
        return Err(Error::NoCpus);
    }

    let gic_node = fdt.find_compatible(&["arm,gic-v3"]).ok_or(Error::NoGicV3)?;
    let gicd = reg_n(gic_node, 0, "GIC distributor")?;
    let gicr = reg_n(gic_node, 1, "GIC redistributor")?;
    let its = match fdt.find_compatible(&["arm,gic-v3-its"]) {
        Some(n) => Some(reg_n(n, 0, "GIC ITS")?),
        None => None,
    };

    // Prefer the console /chosen names; fall back to the first PL011.
    let chosen = find_path(&fdt, "/chosen");
    let uart_node = chosen
        .and_then(|c| c.property("stdout-path"))
        .and_then(|p| p.as_str())
        .and_then(|path| find_path(&fdt, path.split(':').next().unwrap_or(path)))
        .filter(|n| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
        })
        .or_else(|| fdt.find_compatible(&["arm,pl011"]))
        .ok_or(Error::NoUart)?;
    let uart = reg_n(uart_node, 0, "UART")?;
    // <type num flags> with type 0 = SPI.
    let uart_irq = uart_node
        .property("interrupts")
        .map(|p| p.value)
        .filter(|v| v.len() >= 12 && v[0..4] == [0, 0, 0, 0])
        .map(|v| u32::from_be_bytes([v[4], v[5], v[6], v[7]]) + 32);

    let psci = match fdt
        .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
        .and_then(|n| n.property("method"))
        .and_then(|p| p.as_str())
    {
        None => None,
        Some("smc") => Some(PsciConduit::Smc),
        Some("hvc") => Some(PsciConduit::Hvc),
        Some(_) => return Err(Error::BadPsciMethod),
    };

    let timer = discover_timer(&fdt)?;
    let bootargs = chosen
        .and_then(|c| c.property("bootargs"))
        .and_then(|p| p.as_str())
        .unwrap_or("");

    Ok(Platform {
        memory,
        cpus,
        gic: GicInfo { gicd, gicr, its },
        uart,
        uart_irq,
        psci,
        timer,
        pcie: pcie::discover(&fdt),
        smmu: discover_smmu(&fdt),
        rtc: fdt
            .find_compatible(&["arm,pl031"])
            .and_then(|n| reg_n(n, 0, "pl031").ok()),
        bootargs,
    })
}

/// The first `arm,smmu-v3` node: registers, and the SPIs named "eventq"
/// and "gerror" (3-cell GIC specifiers, type 0 = SPI).
fn discover_smmu(fdt: &fdt::Fdt<'_>) -> Option<SmmuInfo> {
    let node = fdt.find_compatible(&["arm,smmu-v3"])?;
    let regs = reg_n(node, 0, "smmu").ok()?;
    let raw = node.property("interrupts").map_or(&[][..], |p| p.value);
    let names = node
        .property("interrupt-names")
        .map_or(&[][..], |p| p.value);
    let spi = |want: &str| {
        let i = names
            .split(|&b| b == 0)
            .position(|n| n == want.as_bytes())?;
        let cell = |c: usize| {
            raw.get(c * 4..c * 4 + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        (cell(i * 3)? == 0).then(|| cell(i * 3 + 1).map(|n| n + 32))?
    };
    Some(SmmuInfo {
        regs,
        eventq_irq: spi("eventq"),
        gerror_irq: spi("gerror"),
    })
}

/// The timer's `interrupts` are four 3-cell GIC specifiers <type num
/// flags> in the order secure physical, non-secure physical, virtual,
/// hypervisor (Linux binding arm,arch_timer); type 1 is a PPI.
fn discover_timer(fdt: &fdt::Fdt<'_>) -> Result<TimerIrqs, Error> {
    let node = fdt
        .find_compatible(&["arm,armv8-timer", "arm,armv7-timer"])
        .ok_or(Error::NoTimer)?;
    let raw = node.property("interrupts").ok_or(Error::NoTimer)?.value;
    if raw.len() < 4 * 12 {
        return Err(Error::NoTimer);
    }
    let cell =
        |i: usize| u32::from_be_bytes([raw[i * 4], raw[i * 4 + 1], raw[i * 4 + 2], raw[i * 4 + 3]]);
    let mut ppi = [0u32; 4];
    for (n, p) in ppi.iter_mut().enumerate() {
        if cell(n * 3) != 1 {
            return Err(Error::NoTimer);
        }
        *p = cell(n * 3 + 1) + 16;
    }
    Ok(TimerIrqs {
        phys_secure: ppi[0],
        phys_nonsecure: ppi[1],
        virt: ppi[2],
        hyp: ppi[3],
    })
}

/// Total size of a device tree blob from its header, or `None` if the
/// header is not an FDT header. Lets the kernel make a slice of the right
/// length from a raw pointer before parsing.
pub fn dtb_total_size(header: &[u8]) -> Option<usize> {
    if header.len() < 8 || header[0..4] != [0xd0, 0x0d, 0xfe, 0xed] {
        return None;
    }
    Some(u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

#[cfg(test)]
mod tests;
