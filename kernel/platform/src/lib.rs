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
mod fdtcheck;
pub mod pcie;

pub use bootargs::BootArgs;
pub use domains::{domains, for_each_domain, DomainConfig, DomainError, MAX_VCPUS, MAX_VMS};

use core::fmt;

/// Most physical CPUs Vigil manages: QEMU `virt`'s limit with GICv3. A
/// compile-time cap as Linux's NR_CPUS is: it sizes only small per-CPU
/// arrays of atomics (8 bytes a CPU each) and the CPU list parsed here
/// before the heap exists; the large per-CPU data (stacks, the `PerCpu`
/// records, LPI pending tables) is allocated at boot for the CPUs the
/// device tree lists. Guests' vCPUs have their own limit, [`MAX_VCPUS`].
pub const MAX_CPUS: usize = 512;

/// Most redistributor regions taken from `#redistributor-regions`
/// (QEMU `virt` uses two once the low region's 123 are not enough).
pub const MAX_GICR_REGIONS: usize = 8;

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

/// Fixed-capacity list of CPU MPIDR affinity values, in device-tree order,
/// no two with the same affinity. Fixed capacity because it is parsed
/// before the heap exists (4 KiB at [`MAX_CPUS`]).
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

    /// Two CPUs with the same affinity fields, if any. Sorts a copy: O(n
    /// log n), no allocation.
    fn duplicate(&self) -> Option<u64> {
        let mut affs = [0u64; MAX_CPUS];
        let affs = &mut affs[..self.len];
        for (a, &m) in affs.iter_mut().zip(self.as_slice()) {
            *a = m & MPIDR_AFFINITY_MASK;
        }
        affs.sort_unstable();
        affs.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
    }

    /// Logical index of the CPU whose MPIDR affinity fields equal `mpidr`'s.
    /// A linear search (used once, for the boot CPU).
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
    /// The redistributor regions, in device-tree order: `reg` entries 1 to
    /// `#redistributor-regions` (Linux binding arm,gic-v3). QEMU `virt`
    /// adds a high region at 256 GiB for CPUs past the low one's 123.
    gicr: [Region; MAX_GICR_REGIONS],
    gicr_count: usize,
    /// `redistributor-stride`, when the tree gives one (padding between
    /// redistributors); else each is as large as its frames.
    pub gicr_stride: Option<u64>,
    /// The ITS control frame and translation frame (128 KiB), when present.
    pub its: Option<Region>,
}

impl GicInfo {
    pub fn new(gicd: Region, gicr: &[Region], its: Option<Region>) -> Result<Self, Error> {
        let mut info = Self {
            gicd,
            gicr: [Region::new(0, 0); MAX_GICR_REGIONS],
            gicr_count: gicr.len(),
            gicr_stride: None,
            its,
        };
        info.gicr
            .get_mut(..gicr.len())
            .ok_or(Error::TooManyGicrRegions)?
            .copy_from_slice(gicr);
        Ok(info)
    }

    /// Every redistributor region.
    pub fn redistributor_regions(&self) -> &[Region] {
        &self.gicr[..self.gicr_count]
    }
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
    /// Two CPUs with this MPIDR affinity.
    DuplicateCpu(u64),
    NoGicV3,
    /// `#redistributor-regions` is 0, above [`MAX_GICR_REGIONS`], or more
    /// than `reg` holds.
    TooManyGicrRegions,
    /// `redistributor-stride` is not a non-zero multiple of 64 KiB.
    BadGicrStride,
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
            Error::DuplicateCpu(m) => write!(f, "two CPUs in the device tree have MPIDR {m:#x}"),
            Error::TooManyGicrRegions => write!(
                f,
                "GIC #redistributor-regions must be 1..={MAX_GICR_REGIONS} and match its reg"
            ),
            Error::BadGicrStride => {
                write!(f, "GIC redistributor-stride is not a multiple of 64 KiB")
            }
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
/// one with). Walks children itself: in the tree QEMU boots Vigil with
/// (`-dtb`, where QEMU NOPs out /memory and appends its own) `find_node`
/// of `fdt` 0.1.5 and of `flat_device_tree` 3.1.1 misses every node after
/// the NOPs, while `children()` sees them (tests/qemu_tree.rs).
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

/// `dtb` for the `fdt` crate, once [`fdtcheck`] found it well-formed (it
/// panics on trees that are not).
pub(crate) fn open(dtb: &[u8]) -> Option<fdt::Fdt<'_>> {
    if !fdtcheck::well_formed(dtb) {
        return None;
    }
    fdt::Fdt::new(dtb).ok()
}

/// Discover the platform from a device tree blob.
pub fn discover(dtb: &[u8]) -> Result<Platform<'_>, Error> {
    let fdt = open(dtb).ok_or(Error::BadDtb)?;

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
    if let Some(m) = cpus.duplicate() {
        return Err(Error::DuplicateCpu(m));
    }

    let gic = discover_gic(&fdt)?;

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
        gic,
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

/// The GICv3 node: the distributor, then `#redistributor-regions` (default
/// 1) redistributor regions in `reg`; the ITS child, if any.
fn discover_gic(fdt: &fdt::Fdt<'_>) -> Result<GicInfo, Error> {
    let node = fdt.find_compatible(&["arm,gic-v3"]).ok_or(Error::NoGicV3)?;
    let gicd = reg_n(node, 0, "GIC distributor")?;
    let count = match node.property("#redistributor-regions") {
        None => 1,
        Some(p) => p.as_usize().ok_or(Error::TooManyGicrRegions)?,
    };
    if count == 0 || count > MAX_GICR_REGIONS {
        return Err(Error::TooManyGicrRegions);
    }
    let mut gicr = [Region::new(0, 0); MAX_GICR_REGIONS];
    for (i, r) in gicr.iter_mut().enumerate().take(count) {
        *r = reg_n(node, 1 + i, "GIC redistributor")?;
    }
    let its = match fdt.find_compatible(&["arm,gic-v3-its"]) {
        Some(n) => Some(reg_n(n, 0, "GIC ITS")?),
        None => None,
    };
    let mut info = GicInfo::new(gicd, &gicr[..count], its)?;
    if let Some(p) = node.property("redistributor-stride") {
        let stride = cells_value(p.value)
            .filter(|&s| s != 0 && s % 0x1_0000 == 0)
            .ok_or(Error::BadGicrStride)?;
        info.gicr_stride = Some(stride);
    }
    Ok(info)
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
