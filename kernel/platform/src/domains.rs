//! Guest VM descriptions in the hypervisor's device tree, in the shape of
//! Xen's dom0less binding (docs/misc/arm/device-tree/booting.txt): one
//! node per VM under `/chosen`, `compatible = "vigil,domain"`, with its
//! memory in KiB, vCPU count, and `multiboot,kernel` / `multiboot,ramdisk`
//! module nodes giving where QEMU's loader put the images.
//!
//! ```dts
//! chosen {
//!     vm0 {
//!         compatible = "vigil,domain";
//!         #address-cells = <2>;
//!         #size-cells = <2>;
//!         memory = <0x0 0x80000>;        /* KiB */
//!         cpus = <2>;
//!         vigil,pcpus = <0 1>;           /* optional pinning */
//!         vigil,identity-map;            /* optional: IPA = PA */
//!         vigil,test-device;             /* optional */
//!         vigil,virtio-blk = "svc";      /* optional: a virtio-mmio disk
//!                                           served by VM svc's userspace */
//!         module@48000000 {
//!             compatible = "multiboot,kernel", "multiboot,module";
//!             reg = <0x0 0x48000000 0x0 0x1000000>;
//!             bootargs = "console=ttyAMA0";
//!         };
//!     };
//! };
//! ```

use crate::{Region, MAX_CPUS};

/// Most vCPUs a VM has, distinct from the physical [`MAX_CPUS`]: 64, in
/// four clusters of 16 (a VM's own MPIDR layout, `vigil_vm::layout`). The
/// vGIC's vCPU sets are 64-bit masks; a VM's 64 redistributors take 8 MiB
/// of its 15 MiB region below the PL011.
pub const MAX_VCPUS: usize = 64;
use alloc::vec::Vec;

/// One VM to create at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig<'a> {
    pub name: &'a str,
    pub memory: u64,
    pub cpus: usize,
    /// Physical CPU of each vCPU (vCPU i runs on `pcpus[i]`), each below
    /// [`MAX_CPUS`].
    pub pcpus: [u16; MAX_VCPUS],
    pub identity_map: bool,
    pub test_device: bool,
    /// Give it the host's PCIe bridge (its devices' DMA confined by the
    /// SMMU, or, without one, only with `identity_map`).
    pub pci_passthrough: bool,
    /// Put its RAM at this physical address (`vigil,ram-base`; implies
    /// the identity map), e.g. for a guest linked at a fixed address.
    pub ram_base: Option<u64>,
    /// A virtio-blk device (virtio-mmio) whose backend is the service
    /// program in the userspace of the VM of this name (`vigil,virtio-blk`).
    pub virtio_blk: Option<&'a str>,
    pub kernel: Region,
    pub ramdisk: Option<Region>,
    pub bootargs: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainError<'a> {
    NoKernel(&'a str),
    BadMemory(&'a str),
    BadCpus(&'a str),
    BadPcpus(&'a str),
    BadModule(&'a str),
    TooMany,
    /// `vigil,virtio-blk` that is not the name of another VM.
    BadBackend(&'a str),
}

impl core::fmt::Display for DomainError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoKernel(n) => write!(f, "VM {n}: no multiboot,kernel module"),
            Self::BadMemory(n) => write!(f, "VM {n}: memory must be <hi lo> KiB, at least 2 MiB"),
            Self::BadCpus(n) => write!(f, "VM {n}: cpus must be 1..={MAX_VCPUS}"),
            Self::BadPcpus(n) => {
                write!(f, "VM {n}: vigil,pcpus must list one physical CPU per vCPU")
            }
            Self::BadModule(n) => write!(f, "VM {n}: a module has no usable reg"),
            Self::TooMany => write!(f, "more than {MAX_VMS} VMs described"),
            Self::BadBackend(n) => write!(
                f,
                "VM {n}: vigil,virtio-blk must name another VM described before or after it"
            ),
        }
    }
}

fn u32s(raw: &[u8]) -> impl Iterator<Item = u32> + '_ {
    raw.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

fn parse<'a>(node: fdt::node::FdtNode<'_, 'a>) -> Result<DomainConfig<'a>, DomainError<'a>> {
    let name = node.name;
    let memory = match node.property("memory").map(|p| p.value) {
        Some(v) if v.len() == 8 => {
            let mut it = u32s(v);
            let kib = ((it.next().unwrap() as u64) << 32) | it.next().unwrap() as u64;
            kib * 1024
        }
        _ => return Err(DomainError::BadMemory(name)),
    };
    if memory < 2 << 20 {
        return Err(DomainError::BadMemory(name));
    }
    let cpus = node
        .property("cpus")
        .and_then(|p| p.as_usize())
        .filter(|&c| (1..=MAX_VCPUS).contains(&c))
        .ok_or(DomainError::BadCpus(name))?;
    let mut pcpus = [0u16; MAX_VCPUS];
    match node.property("vigil,pcpus") {
        Some(p) => {
            let list: &[u8] = p.value;
            if list.len() != cpus * 4 {
                return Err(DomainError::BadPcpus(name));
            }
            for (slot, v) in pcpus.iter_mut().zip(u32s(list)) {
                if v as usize >= MAX_CPUS {
                    return Err(DomainError::BadPcpus(name));
                }
                *slot = v as u16;
            }
        }
        None => {
            for (i, slot) in pcpus.iter_mut().enumerate().take(cpus) {
                *slot = i as u16;
            }
        }
    }
    let mut kernel = None;
    let mut ramdisk = None;
    let mut bootargs = node
        .property("bootargs")
        .and_then(|p| p.as_str())
        .unwrap_or("");
    for m in node.children() {
        let Some(compat) = m.compatible() else {
            continue;
        };
        let is = |s: &str| compat.all().any(|c| c == s);
        let region = || -> Result<Region, DomainError<'a>> {
            let r = m
                .reg()
                .and_then(|mut it| it.next())
                .ok_or(DomainError::BadModule(name))?;
            Ok(Region::new(
                r.starting_address as u64,
                r.size.ok_or(DomainError::BadModule(name))? as u64,
            ))
        };
        if is("multiboot,kernel") {
            kernel = Some(region()?);
            if let Some(b) = m.property("bootargs").and_then(|p| p.as_str()) {
                bootargs = b;
            }
        } else if is("multiboot,ramdisk") {
            ramdisk = Some(region()?);
        }
    }
    let ram_base = match node.property("vigil,ram-base").map(|p| p.value) {
        None => None,
        Some(v) if v.len() == 8 => {
            let mut it = u32s(v);
            Some(((it.next().unwrap() as u64) << 32) | it.next().unwrap() as u64)
        }
        Some(_) => return Err(DomainError::BadMemory(name)),
    };
    let identity_map = node.property("vigil,identity-map").is_some() || ram_base.is_some();
    Ok(DomainConfig {
        name,
        memory,
        cpus,
        pcpus,
        identity_map,
        ram_base,
        test_device: node.property("vigil,test-device").is_some(),
        virtio_blk: match node.property("vigil,virtio-blk") {
            None => None,
            Some(p) => Some(
                p.as_str()
                    .filter(|b| !b.is_empty() && *b != name)
                    .ok_or(DomainError::BadBackend(name))?,
            ),
        },
        pci_passthrough: node.property("vigil,pci-passthrough").is_some(),
        kernel: kernel.ok_or(DomainError::NoKernel(name))?,
        ramdisk,
        bootargs,
    })
}

/// Most VMs one hypervisor runs.
pub const MAX_VMS: usize = 8;

/// Call `f` with every `vigil,domain` node under `/chosen`, in order,
/// without allocating (the kernel reserves the modules' memory before its
/// heap exists). Returns how many there were.
pub fn for_each_domain<'a>(
    dtb: &'a [u8],
    mut f: impl FnMut(DomainConfig<'a>),
) -> Result<usize, DomainError<'a>> {
    let Some(fdt) = crate::open(dtb) else {
        return Ok(0);
    };
    let mut n = 0;
    if let Some(chosen) = crate::find_path(&fdt, "/chosen") {
        for node in chosen.children() {
            if node
                .compatible()
                .is_some_and(|c| c.all().any(|s| s == "vigil,domain"))
            {
                if n == MAX_VMS {
                    return Err(DomainError::TooMany);
                }
                f(parse(node)?);
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Every `vigil,domain` node under `/chosen`, in order; every
/// `vigil,virtio-blk` names another of them.
pub fn domains(dtb: &[u8]) -> Result<Vec<DomainConfig<'_>>, DomainError<'_>> {
    let mut out = Vec::new();
    for_each_domain(dtb, |d| out.push(d))?;
    for d in &out {
        if let Some(b) = d.virtio_blk {
            if !out.iter().any(|o| o.name == b && o.name != d.name) {
                return Err(DomainError::BadBackend(d.name));
            }
        }
    }
    Ok(out)
}
