//! Emulated GICD and GICR register files as declarative tables of register
//! regions with their permitted access widths (the model of KVM's
//! `vgic-mmio-v3.c`). An access with a width a region does not permit, a
//! misaligned access, or one to a reserved offset is RAZ/WI and logged.
//!
//! The distributor presents a single security state (`GICD_CTLR.DS` = 1) with
//! affinity routing always on (`ARE` RAO/WI), as KVM does; so the GICD banked
//! SGI/PPI ranges are RAZ/WI (IHI 0069 ch. 12, `GICD_ISENABLER<n>` and friends "when affinity
//! routing is enabled") and SGIs/PPIs are programmed through each redistributor's
//! SGI_base frame.

use crate::irq::{IntId, Irq, LPI_BASE, SPI_BASE};
use crate::mem::{GuestMemory, RamWindow};
use crate::regs::mpidr_aff;
use crate::state::{LpiConfig, VgicState};
use crate::Kick;
use vigil_gic::regs::{
    GICR_PROPBASER, PENDBASER_FIELDS, PENDBASER_PA, PENDBASER_PTZ, PROPBASER_FIELDS, PROPBASER_PA,
};

pub(crate) const W8: u8 = 1;
pub(crate) const W32: u8 = 4;
pub(crate) const W64: u8 = 8;

/// Size of one redistributor (RD_base + SGI_base), IHI 0069 ch. 12 (GICR_* registers).
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Offset of the SGI_base frame inside a redistributor.
pub const GICR_SGI_BASE: u64 = 0x1_0000;
/// Size of the distributor frame.
pub const GICD_SIZE: u64 = 0x1_0000;

/// `IIDR` of the emulated GIC: implementer ARM (0x43B), product 'V'.
pub const VGIC_IIDR: u32 = (0x56 << 24) | 0x43b;

/// One decoded access, handed to a region handler.
pub(crate) struct Acc<'a> {
    /// vCPU whose banked registers are addressed (redistributor) or that
    /// made the access (distributor).
    pub bank: usize,
    /// The access goes to the distributor.
    pub dist: bool,
    /// Offset inside the region.
    pub off: u32,
    /// Width in bytes.
    pub len: u8,
    /// Bits per interrupt of the region (0 if not per interrupt).
    pub bpi: u8,
    /// First INTID addressed, for per-interrupt regions.
    pub intid: u32,
    pub mem: &'a dyn GuestMemory,
}

type ReadFn = fn(&VgicState, &Acc) -> u64;
type WriteFn = fn(&mut VgicState, &Acc, u64, &mut Kick);

pub(crate) struct Region {
    pub name: &'static str,
    pub offset: u32,
    pub len: u32,
    pub widths: u8,
    pub bpi: u8,
    pub read: ReadFn,
    pub write: WriteFn,
}

const fn reg(
    name: &'static str,
    offset: u32,
    len: u32,
    widths: u8,
    read: ReadFn,
    write: WriteFn,
) -> Region {
    Region {
        name,
        offset,
        len,
        widths,
        bpi: 0,
        read,
        write,
    }
}

const fn per_irq(
    name: &'static str,
    offset: u32,
    len: u32,
    widths: u8,
    bpi: u8,
    read: ReadFn,
    write: WriteFn,
) -> Region {
    Region {
        name,
        offset,
        len,
        widths,
        bpi,
        read,
        write,
    }
}

fn raz(_: &VgicState, _: &Acc) -> u64 {
    0
}
fn wi(_: &mut VgicState, _: &Acc, _: u64, _: &mut Kick) {}

/// The distributor register map (IHI 0069 ch. 12, GICD_* registers).
pub(crate) static GICD_REGIONS: &[Region] = &[
    reg("GICD_CTLR", 0x0000, 4, W32, gicd_ctlr_r, gicd_ctlr_w),
    reg("GICD_TYPER", 0x0004, 4, W32, gicd_typer_r, wi),
    reg("GICD_IIDR", 0x0008, 4, W32, iidr_r, wi),
    reg("GICD_TYPER2", 0x000c, 4, W32, raz, wi),
    reg("GICD_STATUSR", 0x0010, 4, W32, raz, wi),
    per_irq("GICD_IGROUPR", 0x0080, 0x80, W32, 1, igroupr_r, igroupr_w),
    per_irq(
        "GICD_ISENABLER",
        0x0100,
        0x80,
        W32,
        1,
        enabler_r,
        isenabler_w,
    ),
    per_irq(
        "GICD_ICENABLER",
        0x0180,
        0x80,
        W32,
        1,
        enabler_r,
        icenabler_w,
    ),
    per_irq("GICD_ISPENDR", 0x0200, 0x80, W32, 1, pendr_r, ispendr_w),
    per_irq("GICD_ICPENDR", 0x0280, 0x80, W32, 1, pendr_r, icpendr_w),
    per_irq(
        "GICD_ISACTIVER",
        0x0300,
        0x80,
        W32,
        1,
        activer_r,
        isactiver_w,
    ),
    per_irq(
        "GICD_ICACTIVER",
        0x0380,
        0x80,
        W32,
        1,
        activer_r,
        icactiver_w,
    ),
    per_irq(
        "GICD_IPRIORITYR",
        0x0400,
        0x400,
        W8 | W32,
        8,
        ipriorityr_r,
        ipriorityr_w,
    ),
    reg("GICD_ITARGETSR", 0x0800, 0x400, W8 | W32, raz, wi),
    per_irq("GICD_ICFGR", 0x0c00, 0x100, W32, 2, icfgr_r, icfgr_w),
    reg("GICD_IGRPMODR", 0x0d00, 0x80, W32, raz, wi),
    reg("GICD_NSACR", 0x0e00, 0x100, W32, raz, wi),
    reg("GICD_SGIR", 0x0f00, 4, W32, raz, wi),
    reg("GICD_CPENDSGIR", 0x0f10, 0x10, W8 | W32, raz, wi),
    reg("GICD_SPENDSGIR", 0x0f20, 0x10, W8 | W32, raz, wi),
    per_irq(
        "GICD_IROUTER",
        0x6000,
        0x2000,
        W32 | W64,
        64,
        irouter_r,
        irouter_w,
    ),
    reg("GICD_PIDR2", 0xffe8, 4, W32, pidr2_r, wi),
];

/// One redistributor's register map: RD_base and, at +64 KiB,
/// SGI_base (IHI 0069 ch. 12, GICR_* registers).
pub(crate) static GICR_REGIONS: &[Region] = &[
    reg("GICR_CTLR", 0x0000, 4, W32, gicr_ctlr_r, gicr_ctlr_w),
    reg("GICR_IIDR", 0x0004, 4, W32, iidr_r, wi),
    reg("GICR_TYPER", 0x0008, 8, W32 | W64, gicr_typer_r, wi),
    reg("GICR_STATUSR", 0x0010, 4, W32, raz, wi),
    reg("GICR_WAKER", 0x0014, 4, W32, gicr_waker_r, gicr_waker_w),
    reg(
        "GICR_PROPBASER",
        0x0070,
        8,
        W32 | W64,
        propbaser_r,
        propbaser_w,
    ),
    reg(
        "GICR_PENDBASER",
        0x0078,
        8,
        W32 | W64,
        pendbaser_r,
        pendbaser_w,
    ),
    reg("GICR_PIDR2", 0xffe8, 4, W32, pidr2_r, wi),
    per_irq("GICR_IGROUPR0", 0x1_0080, 4, W32, 1, igroupr_r, igroupr_w),
    per_irq(
        "GICR_ISENABLER0",
        0x1_0100,
        4,
        W32,
        1,
        enabler_r,
        isenabler_w,
    ),
    per_irq(
        "GICR_ICENABLER0",
        0x1_0180,
        4,
        W32,
        1,
        enabler_r,
        icenabler_w,
    ),
    per_irq("GICR_ISPENDR0", 0x1_0200, 4, W32, 1, pendr_r, ispendr_w),
    per_irq("GICR_ICPENDR0", 0x1_0280, 4, W32, 1, pendr_r, icpendr_w),
    per_irq(
        "GICR_ISACTIVER0",
        0x1_0300,
        4,
        W32,
        1,
        activer_r,
        isactiver_w,
    ),
    per_irq(
        "GICR_ICACTIVER0",
        0x1_0380,
        4,
        W32,
        1,
        activer_r,
        icactiver_w,
    ),
    per_irq(
        "GICR_IPRIORITYR",
        0x1_0400,
        0x20,
        W8 | W32,
        8,
        ipriorityr_r,
        ipriorityr_w,
    ),
    per_irq("GICR_ICFGR", 0x1_0c00, 8, W32, 2, icfgr_r, icfgr_w),
    reg("GICR_IGRPMODR0", 0x1_0d00, 4, W32, raz, wi),
    reg("GICR_NSACR", 0x1_0e00, 4, W32, raz, wi),
];

/// Find the region and build the access, or `None` (RAZ/WI, logged).
// Inlined: returned through the stack, the `Acc` cost a `memcpy` call on
// every access (scripts/bench: mmio_read_vgic 431 -> 367).
#[inline(always)]
fn decode<'a>(
    table: &'static [Region],
    what: &str,
    off: u32,
    len: u8,
    bank: usize,
    dist: bool,
    mem: &'a dyn GuestMemory,
) -> Option<(&'static Region, Acc<'a>)> {
    if !matches!(len, 1 | 2 | 4 | 8) || !off.is_multiple_of(u32::from(len)) {
        crate::guest_warn!("vgic: {what} +{off:#x}: bad access width {len}, RAZ/WI");
        return None;
    }
    let Some(r) = table
        .iter()
        .find(|r| off >= r.offset && off + u32::from(len) <= r.offset + r.len)
    else {
        crate::guest_warn!("vgic: {what} +{off:#x}: reserved offset, RAZ/WI");
        return None;
    };
    if r.widths & len == 0 {
        crate::guest_warn!(
            "vgic: {} +{off:#x}: {len}-byte access not permitted, RAZ/WI",
            r.name
        );
        return None;
    }
    let roff = off - r.offset;
    let intid = if r.bpi > 0 {
        roff * 8 / u32::from(r.bpi)
    } else {
        0
    };
    Some((
        r,
        Acc {
            bank,
            dist,
            off: roff,
            len,
            bpi: r.bpi,
            intid,
            mem,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn read(
    st: &VgicState,
    table: &'static [Region],
    what: &str,
    off: u32,
    len: u8,
    bank: usize,
    dist: bool,
    mem: &dyn GuestMemory,
) -> u64 {
    match decode(table, what, off, len, bank, dist, mem) {
        Some((r, a)) => (r.read)(st, &a),
        None => 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write(
    st: &mut VgicState,
    table: &'static [Region],
    what: &str,
    off: u32,
    len: u8,
    bank: usize,
    dist: bool,
    val: u64,
    mem: &dyn GuestMemory,
) -> Kick {
    let mut kick = Kick::default();
    if let Some((r, a)) = decode(table, what, off, len, bank, dist, mem) {
        (r.write)(st, &a, val, &mut kick);
    }
    kick
}

// ---- per-interrupt helpers ----

/// INTIDs reachable through this frame: SPIs through the distributor,
/// SGIs/PPIs through a redistributor (ARE = 1).
fn reachable(st: &VgicState, a: &Acc, intid: u32) -> bool {
    let id = IntId::new(intid);
    if a.dist {
        id.is_spi() && intid < st.nr_irqs()
    } else {
        id.is_private()
    }
}

fn read_field(st: &VgicState, a: &Acc, f: impl Fn(&VgicState, &Irq) -> u64) -> u64 {
    let bpi = u32::from(a.bpi);
    let n = u32::from(a.len) * 8 / bpi;
    let mut v = 0u64;
    for i in 0..n {
        let intid = a.intid + i;
        if !reachable(st, a, intid) {
            continue;
        }
        if let Some(irq) = st.irq(a.bank, intid) {
            v |= f(st, irq) << (i * bpi);
        }
    }
    v
}

/// Apply `f` to every addressed interrupt with its field of `val`; for
/// single-bit registers only where the bit is set (set/clear semantics).
fn write_field(
    st: &mut VgicState,
    a: &Acc,
    val: u64,
    kick: &mut Kick,
    only_set: bool,
    f: impl Fn(&mut Irq, u64),
) {
    let bpi = u32::from(a.bpi);
    let n = u32::from(a.len) * 8 / bpi;
    let mask = if bpi == 64 {
        u64::MAX
    } else {
        (1u64 << bpi) - 1
    };
    for i in 0..n {
        let intid = a.intid + i;
        let field = (val >> (i * bpi)) & mask;
        if (only_set && field == 0) || !reachable(st, a, intid) {
            continue;
        }
        if let Some(irq) = st.irq_mut(a.bank, intid) {
            f(irq, field);
            st.queue(a.bank, intid, kick);
        }
    }
}

fn igroupr_r(st: &VgicState, a: &Acc) -> u64 {
    read_field(st, a, |_, i| u64::from(i.group1))
}
fn igroupr_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, false, |i, f| i.group1 = f != 0);
}
fn enabler_r(st: &VgicState, a: &Acc) -> u64 {
    read_field(st, a, |_, i| u64::from(i.enabled))
}
/// Enabling a disabled-but-pending interrupt makes it deliverable: `queue`
/// puts it on its target's list.
fn isenabler_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, true, |i, _| i.enabled = true);
}
fn icenabler_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, true, |i, _| i.enabled = false);
}
fn pendr_r(st: &VgicState, a: &Acc) -> u64 {
    read_field(st, a, |st, i| {
        let in_lr = i.loaded
            && i.owner.is_some_and(|o| {
                st.vcpus[o]
                    .lr_meta
                    .iter()
                    .any(|m| m.intid == i.intid && !m.zombie && m.loaded_pending)
            });
        u64::from(i.pending() || (in_lr && !i.sw_pending_cleared))
    })
}
fn ispendr_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, true, |i, _| i.latch = true);
}
/// Clears the latch; a level interrupt whose line is high stays pending
/// (IHI 0069 ch. 4, level-sensitive interrupts).
fn icpendr_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, true, |i, _| {
        i.latch = false;
        if i.loaded {
            i.sw_pending_cleared = true;
        }
    });
}
fn activer_r(st: &VgicState, a: &Acc) -> u64 {
    read_field(st, a, |_, i| u64::from(i.active))
}
fn isactiver_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, true, |i, _| {
        i.active = true;
        if i.loaded {
            i.sw_active_written = true;
        }
    });
}
/// Clearing the active state makes a pending interrupt deliverable again.
fn icactiver_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, true, |i, _| {
        i.active = false;
        if i.loaded {
            i.sw_active_written = true;
        }
    });
}
fn ipriorityr_r(st: &VgicState, a: &Acc) -> u64 {
    read_field(st, a, |_, i| u64::from(i.priority))
}
/// A priority change of a pending interrupt takes effect at the next flush,
/// which re-sorts the list (the interrupt is reordered, not lost).
fn ipriorityr_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    let mask = st.pri_mask;
    write_field(st, a, v, k, false, |i, f| i.priority = f as u8 & mask);
}
fn icfgr_r(st: &VgicState, a: &Acc) -> u64 {
    read_field(st, a, |_, i| if i.level { 0 } else { 2 })
}
/// SGIs are always edge-triggered (their field is RO 0b10).
fn icfgr_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    write_field(st, a, v, k, false, |i, f| {
        if !IntId::new(i.intid).is_sgi() {
            i.level = f & 2 == 0;
        }
    });
}
fn irouter_r(st: &VgicState, a: &Acc) -> u64 {
    let intid = a.intid;
    if !reachable(st, a, intid) {
        return 0;
    }
    half(st.irq(a.bank, intid).map_or(0, |i| i.irouter), a)
}
/// `GICD_IROUTER<n>`: Aff3 \[39:32\], Aff2.Aff1.Aff0 \[23:0\]; IRM is RES0
/// since `GICD_TYPER.No1N` = 1.
fn irouter_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    let intid = a.intid;
    if !reachable(st, a, intid) {
        return;
    }
    let Some(old) = st.irq(a.bank, intid).map(|i| i.irouter) else {
        return;
    };
    let new = merge_half(old, v, a) & 0xff_00ff_ffff;
    let target = st.vcpu_by_aff(mpidr_aff(new));
    if let Some(irq) = st.irq_mut(a.bank, intid) {
        irq.irouter = new;
        irq.target = target;
    }
    st.queue(a.bank, intid, k);
}

// ---- distributor ----

const CTLR_GRP0: u64 = 1 << 0;
const CTLR_GRP1: u64 = 1 << 1;
const CTLR_ARE: u64 = 1 << 4;
const CTLR_DS: u64 = 1 << 6;

fn gicd_ctlr_r(st: &VgicState, _: &Acc) -> u64 {
    let mut v = CTLR_ARE | CTLR_DS;
    if st.grp0_en {
        v |= CTLR_GRP0;
    }
    if st.grp1_en {
        v |= CTLR_GRP1;
    }
    v
}
/// Group enables change which interrupts are forwarded: everything is
/// re-evaluated (a walk bounded by the INTIDs and the vITS mapping quota),
/// and only when an enable changed, so rewriting the same value costs
/// nothing. RWP stays 0 since the write completes synchronously.
fn gicd_ctlr_w(st: &mut VgicState, _: &Acc, v: u64, k: &mut Kick) {
    let (g0, g1) = (v & CTLR_GRP0 != 0, v & CTLR_GRP1 != 0);
    if (g0, g1) == (st.grp0_en, st.grp1_en) {
        return;
    }
    st.grp0_en = g0;
    st.grp1_en = g1;
    requeue_all(st, k);
}

pub(crate) fn requeue_all(st: &mut VgicState, k: &mut Kick) {
    for v in 0..st.nr_vcpus() {
        for intid in 0..SPI_BASE {
            st.queue(v, intid, k);
        }
    }
    for intid in SPI_BASE..st.nr_irqs() {
        st.queue(0, intid, k);
    }
    let lpis: alloc::vec::Vec<u32> = st.lpis.iter().map(|i| i.intid).collect();
    for intid in lpis {
        st.queue(0, intid, k);
    }
}

/// `GICD_TYPER` (IHI 0069 ch. 12, GICD_TYPER): ITLinesNumber, CPUNumber, LPIS,
/// IDbits, No1N.
fn gicd_typer_r(st: &VgicState, _: &Acc) -> u64 {
    let it_lines = u64::from(st.nr_irqs() / 32 - 1) & 0x1f;
    let cpus = (st.nr_vcpus().min(8) as u64 - 1) << 5;
    let lpis = if st.has_lpis { 1 << 17 } else { 0 };
    let idbits = u64::from(st.lpi_id_bits - 1) << 19;
    let no1n = 1 << 25;
    it_lines | cpus | lpis | idbits | no1n
}
fn iidr_r(_: &VgicState, _: &Acc) -> u64 {
    u64::from(VGIC_IIDR)
}
/// PIDR2.ArchRev = 3 (GICv3).
fn pidr2_r(_: &VgicState, _: &Acc) -> u64 {
    0x3b
}

// ---- redistributor ----

const GICR_CTLR_ENABLE_LPIS: u64 = 1;

fn gicr_ctlr_r(st: &VgicState, a: &Acc) -> u64 {
    u64::from(st.vcpus[a.bank].lpis_enabled) * GICR_CTLR_ENABLE_LPIS
}

/// `GICR_CTLR.EnableLPIs`: on 0 -> 1 the pending table is read (unless the
/// guest said it is zero with PENDBASER.PTZ), so pending state the guest
/// wrote there is honoured for the LPIs mapped to this redistributor.
fn gicr_ctlr_w(st: &mut VgicState, a: &Acc, v: u64, k: &mut Kick) {
    let v_cpu = a.bank;
    let want = v & GICR_CTLR_ENABLE_LPIS != 0 && st.has_lpis;
    let was = st.vcpus[v_cpu].lpis_enabled;
    if want == was {
        return;
    }
    st.vcpus[v_cpu].lpis_enabled = want;
    // Enabling reads the pending table unless PTZ says it is all zeros.
    let mut pending_table = None;
    if want {
        let pendbaser = st.vcpus[v_cpu].pendbaser;
        let base = pendbaser & PENDBASER_PA;
        // The table covers the INTIDs GICR_PROPBASER.IDbits names (IHI
        // 0069 §5.1, "LPI Pending tables"), at most the VM's.
        let idbits = ((st.propbaser & 0x1f) as u8 + 1).clamp(14, st.lpi_id_bits);
        let size = (1u64 << idbits) / 8;
        if pendbaser & PENDBASER_PTZ == 0 {
            if a.mem.is_ram(base, size) {
                pending_table = Some((base, size));
            } else {
                crate::guest_warn!(
                    "vgic: vcpu {v_cpu}: pending table {base:#x} outside RAM, not read"
                );
            }
        }
    }
    for intid in st.lpis_targeting(v_cpu) {
        // An LPI beyond the table's IDbits has no bit in it.
        let in_table = pending_table.filter(|&(_, size)| u64::from(intid / 8) < size);
        if let Some((base, _)) = in_table {
            let byte = a.mem.read_u8(base + u64::from(intid / 8)).unwrap_or(0);
            if byte & (1 << (intid % 8)) != 0 {
                if let Some(irq) = st.lpis.get_mut(intid) {
                    irq.latch = true;
                }
            }
        }
        st.queue(v_cpu, intid, k);
    }
}

/// `GICR_TYPER` (IHI 0069 ch. 12, GICR_TYPER).
fn gicr_typer_r(st: &VgicState, a: &Acc) -> u64 {
    let c = &st.vcpus[a.bank];
    let mut v = (u64::from(mpidr_aff(c.mpidr)) << 32) | ((a.bank as u64 & 0xffff) << 8);
    if a.bank + 1 == st.nr_vcpus() {
        v |= 1 << 4; // Last
    }
    if st.has_lpis {
        v |= 1; // PLPIS
    }
    half(v, a)
}

fn half(v: u64, a: &Acc) -> u64 {
    read_part(v, a.len, u64::from(a.off))
}

fn merge_half(old: u64, v: u64, a: &Acc) -> u64 {
    merge_part(old, v, a.len, u64::from(a.off))
}

/// The part of 64-bit register value `v` that an access of `len` bytes at
/// byte `off` of it reads: all of it, or the 32-bit half `off` names (a
/// 64-bit GIC register permits 32-bit accesses to either half, IHI 0069
/// §12.1.3). Shared with the vITS's register frame.
pub fn read_part(v: u64, len: u8, off: u64) -> u64 {
    match (len, off % 8) {
        (8, _) => v,
        (_, 0) => v & 0xffff_ffff,
        _ => v >> 32,
    }
}

/// 64-bit register value `old` with the part an access of `len` bytes at
/// byte `off` writes replaced by `v` (see [`read_part`]).
pub fn merge_part(old: u64, v: u64, len: u8, off: u64) -> u64 {
    match (len, off % 8) {
        (8, _) => v,
        (_, 0) => (old & !0xffff_ffff) | (v & 0xffff_ffff),
        _ => (old & 0xffff_ffff) | (v << 32),
    }
}

const WAKER_SLEEP: u64 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u64 = 1 << 2;

fn gicr_waker_r(st: &VgicState, a: &Acc) -> u64 {
    if st.vcpus[a.bank].sleep {
        WAKER_SLEEP | WAKER_CHILDREN_ASLEEP
    } else {
        0
    }
}
fn gicr_waker_w(st: &mut VgicState, a: &Acc, v: u64, _: &mut Kick) {
    st.vcpus[a.bank].sleep = v & WAKER_SLEEP != 0;
}

fn propbaser_r(st: &VgicState, a: &Acc) -> u64 {
    half(st.propbaser, a)
}
/// Writes are ignored while this redistributor has LPIs enabled
/// (UNPREDICTABLE in the architecture, IHI 0069 ch. 12, GICR_PROPBASER).
fn propbaser_w(st: &mut VgicState, a: &Acc, v: u64, _: &mut Kick) {
    if st.vcpus[a.bank].lpis_enabled {
        crate::guest_warn!("vgic: GICR_PROPBASER write with EnableLPIs set, ignored");
        return;
    }
    st.propbaser = merge_half(st.propbaser, v, a) & PROPBASER_FIELDS;
}
fn pendbaser_r(st: &VgicState, a: &Acc) -> u64 {
    half(st.vcpus[a.bank].pendbaser & !PENDBASER_PTZ, a)
}
fn pendbaser_w(st: &mut VgicState, a: &Acc, v: u64, _: &mut Kick) {
    if st.vcpus[a.bank].lpis_enabled {
        crate::guest_warn!("vgic: GICR_PENDBASER write with EnableLPIs set, ignored");
        return;
    }
    let c = &mut st.vcpus[a.bank];
    c.pendbaser = merge_half(c.pendbaser, v, a) & PENDBASER_FIELDS;
}

/// Decode the LPI configuration of `intid` from the property table through
/// `mem`, or `None` if PROPBASER does not cover it or it is outside RAM.
pub fn read_lpi_config(propbaser: u64, intid: u32, mem: &dyn GuestMemory) -> Option<LpiConfig> {
    let idbits = GICR_PROPBASER::IDbits.read(propbaser) as u32 + 1;
    let index = IntId::new(intid).lpi_index()?;
    if idbits < 14 || (idbits < 32 && intid >= 1 << idbits) {
        return None;
    }
    let addr = (propbaser & PROPBASER_PA) + u64::from(index);
    // Outside RAM the read fails (the GuestMemory contract): None.
    mem.read_u8(addr).ok().map(LpiConfig::from_byte)
}

/// The LPI property table of one PROPBASER value, translated once for the
/// many reads of a run of ITS commands (MAPTI after MAPTI). Reads as
/// [`read_lpi_config`] does, byte for byte.
#[derive(Clone, Copy)]
pub struct PropTable<'m> {
    propbaser: u64,
    /// The whole table (INTIDs 8192 to 2^IDbits - 1), if all of it is RAM;
    /// otherwise each read goes through [`read_lpi_config`].
    window: Option<RamWindow<'m>>,
}

impl<'m> PropTable<'m> {
    pub fn new(propbaser: u64, mem: &'m dyn GuestMemory) -> Self {
        let idbits = GICR_PROPBASER::IDbits.read(propbaser) as u32 + 1;
        let window = (idbits >= 14)
            .then(|| {
                mem.window(
                    propbaser & PROPBASER_PA,
                    (1u64 << idbits) - u64::from(LPI_BASE),
                )
            })
            .flatten();
        Self { propbaser, window }
    }

    /// The PROPBASER value this table is of.
    pub fn propbaser(&self) -> u64 {
        self.propbaser
    }

    /// As [`read_lpi_config`]`(self.propbaser(), intid, mem)`. The window
    /// holds exactly the entries PROPBASER covers: an INTID below 8192
    /// wraps to an offset far beyond it.
    #[inline(always)]
    pub fn config(&self, intid: u32, mem: &dyn GuestMemory) -> Option<LpiConfig> {
        match &self.window {
            Some(w) => w
                .read_u8(u64::from(intid.wrapping_sub(LPI_BASE)))
                .map(LpiConfig::from_byte),
            None => read_lpi_config(self.propbaser, intid, mem),
        }
    }
}
