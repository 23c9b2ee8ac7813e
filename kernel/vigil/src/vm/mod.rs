//! Virtual machines: creation from the `/chosen` VM descriptions, the
//! per-CPU scheduler and run loop, and stopping.
//!
//! vCPUs are pinned: vCPU `i` of a VM runs on the physical CPU its
//! description names. A physical CPU runs the first runnable vCPU of its
//! queue; a vCPU that waits (WFI) lets the CPU sleep until an interrupt.

mod debug;
pub mod passthrough;
mod pl011;
pub mod rtc;
mod stage2;
mod switch;
mod sysregs;
mod testdev;
mod trap;
pub mod virtio;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use spin::Mutex;
use vigil_platform::pcie::PcieHost;
use vigil_platform::{DomainConfig, MAX_CPUS, MAX_VMS};
use vigil_vm::image::{self, Kind};
use vigil_vm::layout;
use vigil_vm::psci::{PowerState, PsciVm, VcpuPower};

use crate::arch::{self, sysreg};
use crate::bus::{MmioBus, NoFunction};
use crate::vgic::{self as vgic_glue, VmGic};
use crate::{exit, gic, mm};
use pl011::Pl011;
use stage2::Stage2Tables;
use switch::{GuestRegs, CURRENT_REGS};
use sysregs::{El1Regs, PauthKeys};
use vigil_vgic::log_limit::{self, LogLimit};
use vigil_vgic::{CpuIfContext, GuestMemory, Kick, MemError, RamWindow};

/// SGI that makes a physical CPU leave its guest and look at its queue.
pub const SGI_KICK: u8 = 15;

// Every vCPU of the largest VM has a redistributor below the PL011, and a
// place in the vGIC's 64-bit vCPU sets.
const _: () = assert!(vigil_platform::MAX_VCPUS <= layout::MAX_GICR_FRAMES);
const _: () = assert!(vigil_platform::MAX_VCPUS <= 64);

/// PSTATE of a vCPU at reset: EL1h, DAIF masked (Arm ARM C5.2.18).
const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// The status a VM stopped by the hypervisor (a guest fault) contributes
/// to QEMU's exit status.
pub const STATUS_GUEST_FAULT: u32 = 2;

/// One virtual CPU.
pub struct Vcpu {
    pub vm: &'static Vm,
    pub index: usize,
    pub pcpu: usize,
    pub mpidr: u64,
    pub power: VcpuPower,
    /// Set while a physical CPU is inside this vCPU's run loop.
    running: AtomicBool,
    /// It left a shared CPU waiting for an interrupt (WFI): the scheduler
    /// passes it over until it has one to take (see [`Vcpu::wakeable`]).
    waiting: AtomicBool,
    state: Mutex<VcpuState>,
    /// Breakpoints, watchpoints, OS lock: switched lazily (see `debug`).
    debug: debug::DebugState,
    /// Exits so far and the guest PC at the last one. Written only by the
    /// CPU that runs the vCPU (no atomic add on the exit path), read by
    /// the exit total and by the state dump, where two dumps tell a vCPU
    /// that makes progress from one that does not.
    exits: AtomicU64,
    /// Of those, the exits for a physical interrupt (same writer).
    irq_exits: AtomicU64,
    last_pc: AtomicU64,
    /// Its GICv4 vPE, if its VM's passthrough MSIs are injected directly.
    pub vpe: Option<&'static crate::gic::vpe::Vpe>,
}

struct VcpuState {
    regs: GuestRegs,
    el1: El1Regs,
    pauth: PauthKeys,
    cpuif: CpuIfContext,
}

/// A virtual machine.
pub struct Vm {
    /// Its index in the descriptions (VM_BY_ID).
    id: usize,
    pub name: &'static str,
    /// Guest RAM: IPA and the host-physical address backing it.
    pub ram_ipa: u64,
    pub ram_pa: u64,
    pub ram_size: u64,
    vttbr: u64,
    /// Locked for the mappings added after creation (a service VM's
    /// window onto its client's RAM).
    stage2: Mutex<Stage2Tables>,
    vcpus: spin::Once<Vec<&'static Vcpu>>,
    bus: MmioBus,
    pub uart: &'static Pl011,
    pub gic: VmGic,
    /// The VM's virtual ITS (its frames are on `bus`; the hypervisor
    /// raises device LPIs through it).
    pub its: crate::vits::VmIts,
    /// Running, resetting or stopped (see [`VmState`]).
    state: AtomicU8,
    /// Status this VM asked QEMU to exit with (VIGIL_EXIT_STATUS).
    pub exit_status: AtomicU32,
    /// How it was described, to reload it on reset.
    cfg: DomainConfig<'static>,
    /// The host's PCIe bridge, if passed through to this VM.
    pcie: Option<PcieHost<'static>>,
    /// The vCPU that asked for a reset (PSCI SYSTEM_RESET), or NO_RESET;
    /// meaningful while the state is Resetting.
    reset_by: AtomicUsize,
    /// Its virtio-blk device's link, if it is a client of a service VM.
    client_of: Option<&'static virtio::Link>,
    /// Its channel's link, if it is a service VM.
    /// Its channels' links (one per client), if it is a service VM.
    service_of: Vec<&'static virtio::Link>,
    /// Where vCPU 0 starts (entry, device tree), for a client whose boot
    /// waits for its service.
    boot: (u64, u64),
    /// Its allowance of guest-caused warnings.
    log_limit: LogLimit,
    /// Its passed-through devices' DMA: the SMMU's stage-2 tables for them
    /// (its RAM and the ITS doorbell) and the StreamIDs they translate.
    dma: Option<Dma>,
}

/// A VM's devices behind the SMMU.
struct Dma {
    vmid: u16,
    sids: core::ops::Range<u32>,
    /// Kept alive while the SMMU may walk them.
    tables: Stage2Tables,
}

impl Dma {
    fn assign(&self, vm: usize) -> Result<(), crate::smmu::SmmuError> {
        match crate::smmu::get() {
            Some(s) => s.assign(self.sids.clone(), vm, self.vmid, self.tables.root()),
            None => Ok(()),
        }
    }

    fn unassign(&self) -> Result<(), crate::smmu::SmmuError> {
        match crate::smmu::get() {
            Some(s) => s.unassign(self.sids.clone(), self.vmid),
            None => Ok(()),
        }
    }
}

const NO_RESET: usize = usize::MAX;

/// A VM's lifecycle. Every path that could start guest code or put state
/// into the VM consults it: PSCI CPU_ON, the scheduler and run loop (no
/// vCPU enters a VM that is not Running), the host-LPI path (no LPI is
/// raised into a VM being reset). Transitions are single atomic steps:
/// Running -> Resetting (one CAS: of racing SYSTEM_RESETs exactly one
/// wins), Resetting -> Running (after the reload, unless it was stopped
/// meanwhile), any -> Stopped (a swap: the first stop reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VmState {
    Running = 0,
    Resetting = 1,
    Stopped = 2,
}
/// How long a client's reset waits for its service to take it.
const RESET_ACK_MS: u64 = 2000;

impl Vm {
    pub fn vcpus(&self) -> &[&'static Vcpu] {
        self.vcpus.get().map_or(&[], |v| v.as_slice())
    }

    /// Make the vCPUs in `vcpus` look at their interrupts: their CPUs
    /// leave the guest, or wake from WFI. One SGI write per cluster of
    /// target CPUs; vCPUs sharing a CPU kick it once.
    #[inline]
    pub fn kick(&self, vcpus: Kick) {
        // Every exit comes here, nearly always with nothing to kick: the
        // test is inlined into the caller, the rest is not.
        if !vcpus.is_empty() {
            self.kick_some(vcpus);
        }
    }

    #[inline(never)]
    fn kick_some(&self, vcpus: Kick) {
        // Each vCPU's CPU from the VM's own description (a plain array,
        // fixed at creation), not through its vCPU records.
        let pcpus = &self.cfg.pcpus[..self.cfg.cpus.min(self.cfg.pcpus.len())];
        let mut two = vcpus.iter();
        match (two.next(), two.next()) {
            (None, _) => {}
            // The usual case (a unicast IPI, an LPI): no grouping to do.
            (Some(i), None) => {
                if let Some(&p) = pcpus.get(i) {
                    kick(usize::from(p));
                }
            }
            _ => kick_cpus_of(pcpus, vcpus),
        }
    }

    pub fn state(&self) -> VmState {
        match self.state.load(Ordering::SeqCst) {
            0 => VmState::Running,
            1 => VmState::Resetting,
            _ => VmState::Stopped,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.state() == VmState::Stopped
    }

    /// Whether its vCPUs may run and interrupts may be raised into it.
    pub fn is_running(&self) -> bool {
        self.state() == VmState::Running
    }

    /// Host-physical address of guest RAM at `ipa`, for `len` bytes.
    pub fn ram_pa(&self, ipa: u64, len: u64) -> Option<u64> {
        let off = ipa.checked_sub(self.ram_ipa)?;
        (off.checked_add(len)? <= self.ram_size).then_some(self.ram_pa + off)
    }

    /// Stop the VM: every vCPU off, their CPUs kicked. The first reason
    /// given is the one reported; `status` feeds QEMU's exit status.
    pub fn stop(&self, reason: core::fmt::Arguments<'_>, status: u32) {
        self.exit_status.fetch_max(status, Ordering::AcqRel);
        if self.state.swap(VmState::Stopped as u8, Ordering::SeqCst) == VmState::Stopped as u8 {
            return;
        }
        if status == 0 {
            log::info!("vm {}: {}", self.name, reason);
        } else {
            log::error!("vm {}: stopped: {}", self.name, reason);
        }
        self.report_health();
        self.report_exits();
        if let Some(dma) = &self.dma {
            // Its devices may not DMA into memory nobody owns any more.
            if let Err(e) = dma.unassign() {
                log::error!("vm {}: stop: SMMU: {e}", self.name);
            }
            if let Some(s) = crate::smmu::get() {
                s.drain_events();
            }
        }
        self.power_off_vcpus();
        // Typing into a VM that is gone would be lost: the focus moves on.
        if vm_by_id(FOCUS.load(Ordering::Relaxed)).is_some_and(|v| core::ptr::eq(v, self)) {
            next_focus();
        }
        if let Some(l) = self.client_of {
            l.client_stopped();
        }
        // A client still waiting for this service would wait forever.
        for l in self.service_of.iter().filter(|l| !l.ready()) {
            if let Some(client) = vm_by_id(l.client) {
                client.stop(
                    format_args!(
                        "its virtio-blk backend vm {} stopped before it was ready",
                        self.name
                    ),
                    STATUS_GUEST_FAULT,
                );
            }
        }
        vm_stopped();
    }

    /// vGIC anomalies: emulation states that must never occur (a stale list
    /// entry, a route to a retired generation...). Zero unless Vigil has a
    /// bug; tests fail on any.
    pub fn anomalies(&self) -> u64 {
        self.gic.lock().anomalies()
    }

    /// The line at a VM's stop that says whether its emulation stayed
    /// sound, and how many warnings it caused.
    fn report_health(&self) {
        let (anomalies, warnings) = (self.anomalies(), self.log_limit.seen());
        if anomalies != 0 {
            log::error!(
                "vm {}: {anomalies} vGIC/vITS anomalies (an emulation bug), {warnings} guest-caused warnings",
                self.name
            );
        } else {
            log::info!(
                "vm {}: 0 vGIC/vITS anomalies, {warnings} guest-caused warnings",
                self.name
            );
        }
    }

    /// The line at a VM's stop that counts its exits, and for a VM with
    /// passthrough how its devices' MSIs reached it: through host LPIs
    /// (each one an exit, or a wakeup), or straight to the vCPU (GICv4,
    /// no exit). A vCPU still in its guest adds what it counted so far.
    fn report_exits(&self) {
        let (exits, irqs) = self.vcpus().iter().fold((0, 0), |(e, i), v| {
            (
                e + v.exits.load(Ordering::Relaxed),
                i + v.irq_exits.load(Ordering::Relaxed),
            )
        });
        log::info!(
            "vm {}: {exits} exits, {irqs} of them for physical interrupts",
            self.name
        );
        if self.pcie.is_some() {
            use passthrough::{DELIVERED, DIRECT_MAPS, DROPPED};
            log::info!(
                "vm {}: passthrough MSIs: {} through host LPIs ({} dropped), {} events mapped to vLPIs directly, {} doorbells",
                self.name,
                DELIVERED.load(Ordering::Relaxed),
                DROPPED.load(Ordering::Relaxed),
                DIRECT_MAPS.load(Ordering::Relaxed),
                crate::gic::vpe::DOORBELLS_RUNG.load(Ordering::Relaxed)
            );
        }
    }

    /// The vITS and vGIC back as the VM was created (a reset, and at
    /// Vigil's exit). The vITS first: once its mappings are gone no host
    /// LPI reaches the vGIC, which is then reset with nothing left to
    /// raise into it.
    fn reset_interrupts(&self) {
        self.its.reset();
        self.gic.reset();
        vgic_glue::link_timers(&self.gic);
    }

    /// Every vCPU off and out of the guest (stop, reset).
    fn power_off_vcpus(&self) {
        for v in self.vcpus() {
            v.power.set_off();
        }
        kick_cpus(self.vcpus().iter().map(|v| v.pcpu));
    }
}

impl Vm {
    /// Start a client whose boot waited for its service (once).
    pub fn start_held(&self) {
        let v = self.vcpus()[0];
        if v.power.state() == PowerState::Off
            && v.power.request_on(self.boot.0, self.boot.1).is_ok()
        {
            kick(v.pcpu);
        }
    }

    /// PSCI SYSTEM_RESET from vCPU `by`: every vCPU leaves the guest; the
    /// CPU of `by` then reloads the VM (see [`Vm::finish_reset`]).
    pub fn request_reset(&self, by: usize) {
        if self
            .state
            .compare_exchange(
                VmState::Running as u8,
                VmState::Resetting as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            return;
        }
        self.reset_by.store(by, Ordering::SeqCst);
        log::info!(
            "vm {}: reset requested by vCPU {by} (PSCI SYSTEM_RESET)",
            self.name
        );
        self.power_off_vcpus();
    }

    /// Complete a reset once no vCPU of the VM runs: reload the images,
    /// put the virtual GIC and ITS back to power-on state, and start vCPU 0
    /// at the kernel's entry as at boot.
    fn finish_reset(&self) {
        self.reset_by.store(NO_RESET, Ordering::SeqCst);
        if self.state() != VmState::Resetting {
            return;
        }
        // No vCPU enters a VM that is not Running, and one that was in its
        // run loop when the reset began leaves it at its next exit.
        let others_stopped = arch::wait_until(10_000, || {
            self.vcpus()
                .iter()
                .all(|v| !v.running.load(Ordering::SeqCst))
        });
        if !others_stopped {
            self.stop(
                format_args!("reset: its vCPUs did not stop within 10 s"),
                STATUS_GUEST_FAULT,
            );
            return;
        }
        // A CPU_ON that raced the reset may have left a vCPU pending; no
        // guest code runs now, so none can come after this.
        for v in self.vcpus() {
            v.power.set_off();
        }
        // Its passed-through devices stop DMA into this RAM while the
        // images are reloaded (the SMMU aborts them) and get it back after.
        if let Some(dma) = &self.dma {
            if let Err(e) = dma.unassign() {
                self.stop(format_args!("reset: SMMU: {e}"), STATUS_GUEST_FAULT);
                return;
            }
        }
        // A client's device resets first: its service must stop writing
        // into this RAM before the images are loaded into it.
        if let Some(l) = self.client_of {
            if !l.client_reset(RESET_ACK_MS) {
                log::warn!(
                    "vm {}: reset: its virtio-blk service did not take the reset within {RESET_ACK_MS} ms; reloading anyway",
                    self.name
                );
            }
        }
        let windows: Vec<u64> = self.service_of.iter().map(|l| l.window()).collect();
        let boot = match load_images(
            &self.cfg,
            self.pcie,
            &windows,
            self.ram_ipa,
            self.ram_pa,
            self.ram_size,
        ) {
            Ok(b) => b,
            Err(e) => {
                self.stop(
                    format_args!("reset: reloading failed: {e}"),
                    STATUS_GUEST_FAULT,
                );
                return;
            }
        };
        self.reset_interrupts();
        if let Some(dma) = &self.dma {
            if let Err(e) = dma.assign(self.id) {
                self.stop(format_args!("reset: SMMU: {e}"), STATUS_GUEST_FAULT);
                return;
            }
        }
        for l in &self.service_of {
            l.service_reset();
        }
        let boot_vcpu = self.vcpus()[0];
        // vCPU 0 starts as at power-on: entry point, x0 = device tree.
        if let Err(e) = boot_vcpu.power.request_on(boot.entry, boot.placement.dtb) {
            self.stop(
                format_args!("reset: vCPU 0 could not be restarted (PSCI {e})"),
                STATUS_GUEST_FAULT,
            );
            return;
        }
        if self
            .state
            .compare_exchange(
                VmState::Resetting as u8,
                VmState::Running as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            // Stopped while it was being reloaded.
            return;
        }
        log::info!(
            "vm {}: reset: images reloaded, vCPU 0 restarts at {:#x}",
            self.name,
            boot.entry
        );
        kick(boot_vcpu.pcpu);
    }
}

impl GuestMemory for Vm {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.ram_pa(gpa, len).is_some()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let pa = self
            .ram_pa(gpa, buf.len() as u64)
            .ok_or(MemError::OutOfRam)?;
        // SAFETY: `ram_pa` checked the whole range is this VM's RAM,
        // identity-mapped at EL2; Vigil accesses it only through
        // vigil_guestmem while vCPUs run (images are written while none
        // does), so the guest's own writes are the only other accesses.
        unsafe { vigil_guestmem::read(pa as *const u8, buf) };
        Ok(())
    }

    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), MemError> {
        let pa = self
            .ram_pa(gpa, 8 * out.len() as u64)
            .ok_or(MemError::OutOfRam)?;
        // SAFETY: as in `read`.
        unsafe { vigil_guestmem::read_le_u64s(pa as *const u8, out) };
        Ok(())
    }

    fn read_u8(&self, gpa: u64) -> Result<u8, MemError> {
        let pa = self.ram_pa(gpa, 1).ok_or(MemError::OutOfRam)?;
        // SAFETY: as in `read`.
        Ok(unsafe { vigil_guestmem::read_u8(pa as *const u8) })
    }

    fn window(&self, gpa: u64, len: u64) -> Option<RamWindow<'_>> {
        let pa = self.ram_pa(gpa, len)?;
        // SAFETY: as in `read`; the VM's RAM stays mapped as long as the VM
        // (and so this borrow) lives.
        Some(unsafe { RamWindow::new(pa as *const u8, usize::try_from(len).ok()?) })
    }
}

impl PsciVm for Vm {
    fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
        layout::vcpu_index(mpidr, self.vcpus().len())
    }

    fn power(&self, vcpu: usize) -> &VcpuPower {
        &self.vcpus()[vcpu].power
    }

    fn is_ram(&self, ipa: u64) -> bool {
        self.ram_pa(ipa, 4).is_some()
    }

    fn may_power_on(&self) -> bool {
        self.is_running()
    }
}

/// Every VM by id, readable without a lock (device interrupt paths, the
/// console's tags).
static VM_BY_ID: [spin::Once<&'static Vm>; MAX_VMS] = [const { spin::Once::new() }; MAX_VMS];
static VMS_LEFT: AtomicUsize = AtomicUsize::new(0);
/// vCPUs each physical CPU runs.
static RUNQ: [Mutex<Vec<&'static Vcpu>>; MAX_CPUS] = [const { Mutex::new(Vec::new()) }; MAX_CPUS];
/// The vCPU whose EL1 state is loaded on each physical CPU (address).
static LOADED: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
static NEXT_VMID: AtomicU32 = AtomicU32::new(1);
static HAS_PAUTH: AtomicBool = AtomicBool::new(false);
/// The VM whose console gets the keyboard.
static FOCUS: AtomicUsize = AtomicUsize::new(0);
/// Every VM created.
fn all_vms() -> impl Iterator<Item = &'static Vm> {
    (0..count()).filter_map(vm_by_id)
}

/// Every vCPU of every VM.
fn all_vcpus() -> impl Iterator<Item = &'static Vcpu> {
    all_vms().flat_map(|vm| vm.vcpus().iter().copied())
}

/// Guest exits of every vCPU so far, for the log.
fn total_exits() -> u64 {
    all_vcpus().map(|v| v.exits.load(Ordering::Relaxed)).sum()
}

fn kick(pcpu: usize) {
    if pcpu == arch::cpu_index() {
        return;
    }
    gic::send_sgi(SGI_KICK, pcpu);
}

/// The CPUs (by `pcpus`, each vCPU's) of several vCPUs kicked at once:
/// out of line, so the unicast kick keeps to a few registers.
#[inline(never)]
fn kick_cpus_of(pcpus: &[u16], vcpus: Kick) {
    kick_cpus(
        vcpus
            .iter()
            .filter_map(|i| pcpus.get(i))
            .map(|&p| usize::from(p)),
    );
}

/// [`kick`] for several CPUs at once (this one left out).
fn kick_cpus(pcpus: impl Iterator<Item = usize>) {
    let me = arch::cpu_index();
    gic::send_sgi_to(SGI_KICK, pcpus.filter(|&p| p != me));
}

fn on_kick(_intid: u32) {}

/// [`Vm::kick`] for VM `vm`, known by id.
pub fn kick_vm(vm: usize, vcpus: Kick) {
    if let Some(vm) = vm_by_id(vm) {
        vm.kick(vcpus);
    }
}

/// VM `id`, if it exists.
pub fn vm_by_id(id: usize) -> Option<&'static Vm> {
    VM_BY_ID.get(id).and_then(|o| o.get()).copied()
}

/// Drive the line of VM `vm`'s UART SPI.
pub fn set_uart_line(vm: usize, level: bool) -> Kick {
    match vm_by_id(vm) {
        Some(vm) => vm
            .gic
            .set_line(0, vigil_vgic::SPI_BASE + layout::UART_SPI, level),
        None => Kick::default(),
    }
}

/// The vCPU whose state is loaded on this CPU, if any.
fn loaded() -> Option<&'static Vcpu> {
    loaded_on(arch::cpu_index())
}

/// The vCPU whose state is loaded on CPU `cpu`, if any.
fn loaded_on(cpu: usize) -> Option<&'static Vcpu> {
    let loaded = LOADED[cpu].load(Ordering::Relaxed);
    // SAFETY: LOADED only holds 0 or addresses of leaked, never-freed
    // vCPUs.
    (loaded != 0).then(|| unsafe { &*(loaded as *const Vcpu) })
}

/// Guest timer `t`'s physical interrupt fired on this CPU: raise the
/// virtual one of the vCPU loaded here. Returns whether one is loaded.
pub fn timer_fired(t: vgic_glue::GuestTimer) -> bool {
    match loaded() {
        Some(v) if !v.vm.is_stopped() => {
            vgic_glue::timer_line_high(&v.vm.gic, v.index, t);
            true
        }
        _ => false,
    }
}

/// The VM whose trap runs on this CPU, to charge a guest-caused warning to.
fn warning_context() -> Option<log_limit::Context> {
    loaded().map(|v| (v.vm.name, &v.vm.log_limit))
}

/// Why a VM could not be built.
#[derive(Debug)]
pub enum VmError {
    Memory(vigil_mm::FrameError),
    Map(aarch64_paging::MapError),
    Place(image::PlaceError),
    Elf(vigil_vm::elf::ElfError),
    Dt(vigil_vm::fdt::Error),
    NoSuchCpu(usize),
    NoStage2,
    NoPcie,
    PcieTaken,
    /// Passthrough to a VM whose RAM is not identity-mapped, with no SMMU
    /// to translate its devices' DMA.
    NoSmmu,
    Smmu(crate::smmu::SmmuError),
    /// A VM serves more than one virtio client, or is a client and a
    /// service at once.
    Backend(&'static str),
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Memory(e) => write!(f, "guest memory: {e}"),
            Self::Map(e) => write!(f, "stage-2 tables: {e}"),
            Self::Place(e) => write!(f, "{e}"),
            Self::Elf(e) => write!(f, "kernel image: {e}"),
            Self::Dt(e) => write!(f, "{e}"),
            Self::NoSuchCpu(c) => write!(f, "vCPU pinned to physical CPU {c}, which is not online"),
            Self::NoStage2 => write!(f, "the CPU's physical address range is below 48 bits"),
            Self::NoPcie => write!(
                f,
                "PCIe passthrough asked for, but the machine has no PCIe host bridge"
            ),
            Self::PcieTaken => write!(f, "only one VM can have the PCIe host bridge"),
            Self::NoSmmu => write!(
                f,
                "PCIe passthrough to a VM without vigil,identity-map needs the SMMU (QEMU: -machine virt,iommu=smmuv3 -global arm-smmuv3.stage=2)"
            ),
            Self::Smmu(e) => write!(f, "{e}"),
            Self::Backend(n) => write!(
                f,
                "vm {n}: a service VM serves at most 4 clients (of at most 64 GiB each) and is no client itself"
            ),
        }
    }
}

/// Per-CPU EL2 settings for running guests. Every CPU, once.
pub fn init_cpu() {
    // SAFETY: the format of every VM's stage-2 tables (stage2.rs); no
    // guest runs yet on this CPU.
    unsafe { sysreg::set_vtcr_el2(stage2::vtcr()) };
    // EL1 may use the physical counter and timer (CNTHCTL_EL2.EL1PCTEN,
    // EL1PCEN, E2H == 0 layout).
    sysreg::set_cnthctl_el2(sysreg::cnthctl_el2() | 3);
    sysreg::set_cntvoff_el2(0);
    debug::init_cpu();
    sysreg::isb();
}

/// Build every VM described in the device tree. Primary CPU, after all
/// CPUs are online.
pub fn create_all(
    domains: &[DomainConfig<'static>],
    online: usize,
    pcie: Option<PcieHost<'static>>,
) -> Result<usize, VmError> {
    if domains.is_empty() {
        return Ok(0);
    }
    if !stage2::supported() {
        return Err(VmError::NoStage2);
    }
    HAS_PAUTH.store(sysregs::has_pauth(), Ordering::Relaxed);
    log_limit::set_context(warning_context);
    gic::register(SGI_KICK as u32, on_kick);
    // Check every description before building anything.
    for (id, d) in domains.iter().enumerate() {
        for &p in &d.pcpus[..d.cpus] {
            if p as usize >= online {
                return Err(VmError::NoSuchCpu(p as usize));
            }
        }
        if d.pci_passthrough {
            if pcie.is_none() {
                return Err(VmError::NoPcie);
            }
            if domains[..id].iter().any(|o| o.pci_passthrough) {
                return Err(VmError::PcieTaken);
            }
        }
    }
    // Virtio links: (client, service, client RAM) for each vigil,virtio-blk.
    let mut pairs = Vec::new();
    for (id, d) in domains.iter().enumerate() {
        let Some(backend) = d.virtio_blk else {
            continue;
        };
        let Some(service) = domains.iter().position(|o| o.name == backend) else {
            return Err(VmError::Backend(d.name));
        };
        let served = pairs.iter().filter(|&&(_, s, _)| s == service).count();
        let ram = d.memory.next_multiple_of(2 << 20);
        if served == layout::MAX_CHANNELS
            || domains[service].virtio_blk.is_some()
            || ram.next_power_of_two() > layout::CHANNEL_MMIO64_SLOT
        {
            return Err(VmError::Backend(backend));
        }
        pairs.push((id, service, ram));
    }
    virtio::create_links(&pairs);
    for (id, d) in domains.iter().enumerate().take(MAX_VMS) {
        create(id, d, pcie.filter(|_| d.pci_passthrough))?;
        VMS_LEFT.fetch_add(1, Ordering::AcqRel);
        VM_COUNT.fetch_add(1, Ordering::Relaxed);
    }
    // Each service's window onto its client's RAM (both exist now; no
    // vCPU runs yet).
    for &(client, service, _) in &pairs {
        let (c, s) = (vm_by_id(client).unwrap(), vm_by_id(service).unwrap());
        let link = c.client_of.unwrap();
        let window = layout::channel_mmio64(link.index);
        s.stage2
            .lock()
            .map_ram(window, c.ram_pa, c.ram_size)
            .map_err(VmError::Map)?;
        link.set_client_ram(c.ram_ipa, c.ram_size);
        log::info!(
            "vm {}: virtio-blk at {:#x} (SPI {}), served by vm {} through its channel {} (ECAM {:#x}), which sees its RAM at {:#x}; vm {} starts when the service is ready",
            c.name,
            layout::VIRTIO_MMIO_BASE,
            layout::VIRTIO_SPI,
            s.name,
            link.index,
            layout::channel_ecam(link.index),
            window,
            c.name
        );
    }
    Ok(domains.len())
}

/// Where a VM starts: its entry point and the guest addresses of what
/// was loaded.
struct Boot {
    entry: u64,
    placement: image::Placement,
}

/// Copy a VM's kernel, initrd and generated device tree into its RAM
/// (`size` bytes at IPA `ipa`, backed by host-physical `pa`). Done at
/// creation and again on every reset.
fn load_images(
    d: &DomainConfig<'_>,
    pcie: Option<PcieHost<'_>>,
    channels: &[u64],
    ipa: u64,
    pa: u64,
    size: u64,
) -> Result<Boot, VmError> {
    // The kernel and initrd, where QEMU's loader left them.
    // SAFETY: the module ranges come from the device tree, were reserved
    // from the frame allocator at boot, and are identity-mapped RAM that
    // nothing writes.
    let kernel =
        unsafe { core::slice::from_raw_parts(d.kernel.base as *const u8, d.kernel.size as usize) };
    // SAFETY: as above.
    let initrd = d
        .ramdisk
        .map(|r| unsafe { core::slice::from_raw_parts(r.base as *const u8, r.size as usize) });
    let copy = |at_ipa: u64, bytes: &[u8]| {
        let dst = pa + (at_ipa - ipa);
        // SAFETY: `dst..dst+len` is inside this VM's RAM, checked by the
        // placement (or ELF parsing); no vCPU of the VM runs while it is
        // loaded.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len()) };
    };
    let initrd_len = initrd.map(|i| i.len() as u64);
    let (entry, placement) = if vigil_vm::elf::is_elf(kernel) {
        let elf = vigil_vm::elf::parse(kernel, ipa, size).map_err(VmError::Elf)?;
        let end = elf
            .segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(ipa);
        let span = end.saturating_sub(ipa + image::RAW_OFFSET);
        let p = image::place(ipa, size, Kind::Raw, span, 0, initrd_len).map_err(VmError::Place)?;
        for s in &elf.segments {
            copy(
                s.paddr,
                &kernel[s.offset as usize..(s.offset + s.filesz) as usize],
            );
            // BSS (the rest of memsz) is zeroed: after a reset it may hold
            // the previous run's data.
            let bss = pa + (s.paddr + s.filesz - ipa);
            // SAFETY: inside this VM's RAM (checked by ELF parsing).
            unsafe { core::ptr::write_bytes(bss as *mut u8, 0, (s.memsz - s.filesz) as usize) };
        }
        (elf.entry, p)
    } else {
        let kind = image::inspect(kernel);
        let p = image::place(ipa, size, kind, kernel.len() as u64, 0, initrd_len)
            .map_err(VmError::Place)?;
        copy(p.kernel, kernel);
        (p.kernel, p)
    };
    if let (Some(at), Some(bytes)) = (placement.initrd, initrd) {
        copy(at, bytes);
    }
    let dt = vigil_vm::fdt::build(&vigil_vm::fdt::GuestDt {
        ram_base: ipa,
        ram_size: size,
        cpus: d.cpus,
        bootargs: d.bootargs,
        initrd: placement
            .initrd
            .zip(initrd)
            .map(|(at, b)| (at, at + b.len() as u64)),
        its: true,
        test_device: d.test_device,
        pcie: pcie.map(|p| vigil_vm::fdt::PcieDt {
            ecam: (p.ecam.base, p.ecam.size),
            ranges: p.ranges,
            bus_range: p.bus_range,
            interrupt_map_mask: p.interrupt_map_mask,
            interrupt_map: p.interrupt_map,
        }),
        virtio_mmio: d.virtio_blk.is_some(),
        channels,
    })
    .map_err(VmError::Dt)?;
    if dt.len() as u64 > 2 << 20 {
        return Err(VmError::Place(image::PlaceError::DtbTooLarge));
    }
    copy(placement.dtb, &dt);
    Ok(Boot { entry, placement })
}

fn create(
    id: usize,
    d: &DomainConfig<'static>,
    pcie: Option<PcieHost<'static>>,
) -> Result<&'static Vm, VmError> {
    let size = d.memory.next_multiple_of(2 << 20);
    let pa = match d.ram_base {
        Some(base) => {
            mm::alloc_frames_at(base, size / 4096).map_err(VmError::Memory)?;
            base
        }
        None => mm::alloc_frames(size / 4096, 2 << 20).map_err(VmError::Memory)?,
    };
    let ipa = if d.identity_map { pa } else { layout::RAM_BASE };
    let vmid = NEXT_VMID.fetch_add(1, Ordering::Relaxed) as u16;
    let mut s2 = Stage2Tables::new(vmid);
    s2.map_ram(ipa, pa, size).map_err(VmError::Map)?;
    let hidden = exit::hidden();
    if let Some(p) = &pcie {
        // The bridge's configuration space and windows, straight through,
        // less Vigil's exit device (its configuration space reads as no
        // function, below; its BAR page is not mapped).
        for r in core::iter::once(&p.ecam).chain(p.windows()) {
            for (base, size) in vigil_vm::layout::subtract((r.base, r.size), &hidden) {
                s2.map_device(base, base, size).map_err(VmError::Map)?;
            }
        }
    }
    let dma = match (&pcie, crate::smmu::get()) {
        (Some(p), Some(smmu)) => Some(dma_tables(vmid, p, smmu, ipa, pa, size)?),
        (Some(_), None) if !d.identity_map => return Err(VmError::NoSmmu),
        (Some(_), None) => {
            log::warn!(
                "vm {}: PCIe passthrough without an SMMU: its devices' DMA reaches all memory",
                d.name
            );
            None
        }
        _ => None,
    };
    let client_of = virtio::link_of_client(id);
    let service_of: Vec<_> = virtio::links_of_service(id).collect();
    let windows: Vec<u64> = service_of.iter().map(|l| l.window()).collect();
    let boot = load_images(d, pcie, &windows, ipa, pa, size)?;
    let (entry, placement) = (boot.entry, boot.placement);

    let uart: &'static Pl011 = Box::leak(Box::new(Pl011::new(id)));
    let gic = vgic_glue::new_vm_gic(d.cpus, true);
    let its = crate::vits::new_vm_its(&gic);
    if pcie.is_some() {
        if let Some(phys) = passthrough::KernelIts::new(id) {
            its.set_mirror(alloc::sync::Arc::new(vigil_vits::mirror::PassMirror::new(
                id, phys,
            )));
        }
    }
    let mut bus = MmioBus::default();
    bus.add(layout::UART_BASE, layout::UART_SIZE, uart);
    bus.add(
        layout::RTC_BASE,
        layout::RTC_SIZE,
        Box::leak(Box::new(rtc::Rtc::new())),
    );
    bus.add(
        layout::GICD_BASE,
        layout::GICD_SIZE,
        Box::leak(Box::new(vgic_glue::GicdFrame(gic.clone()))),
    );
    bus.add(
        layout::ITS_BASE,
        layout::ITS_SIZE,
        Box::leak(Box::new(crate::vits::ItsFrames(its.clone()))),
    );
    bus.add(
        layout::GICR_BASE,
        layout::GICR_STRIDE * d.cpus as u64,
        Box::leak(Box::new(vgic_glue::GicrFrames(gic.clone()))),
    );
    if pcie.is_some() && hidden[0].1 != 0 {
        bus.add(hidden[0].0, hidden[0].1, &NoFunction);
    }
    if let Some(l) = client_of {
        bus.add(
            layout::VIRTIO_MMIO_BASE,
            layout::VIRTIO_MMIO_SIZE,
            Box::leak(Box::new(virtio::ClientFrame(l))),
        );
    }
    for l in &service_of {
        bus.add(
            layout::channel_ecam(l.index),
            layout::CHANNEL_ECAM_SIZE,
            Box::leak(Box::new(virtio::ChannelEcam(l))),
        );
        bus.add(
            layout::channel_mmio32(l.index),
            layout::CHANNEL_MMIO32_SIZE,
            Box::leak(Box::new(virtio::ChannelRegs(l))),
        );
    }
    if d.test_device {
        let dev: &'static testdev::TestDevice = Box::leak(Box::new(testdev::TestDevice::new()));
        bus.add(layout::TEST_DEVICE_BASE, layout::TEST_DEVICE_SIZE, dev);
    }

    let vm: &'static Vm = Box::leak(Box::new(Vm {
        id,
        name: d.name,
        ram_ipa: ipa,
        ram_pa: pa,
        ram_size: size,
        vttbr: s2.vttbr(),
        stage2: Mutex::new(s2),
        vcpus: spin::Once::new(),
        bus,
        uart,
        gic,
        its,
        state: AtomicU8::new(VmState::Running as u8),
        exit_status: AtomicU32::new(0),
        cfg: *d,
        pcie,
        reset_by: AtomicUsize::new(NO_RESET),
        client_of,
        service_of,
        boot: (entry, placement.dtb),
        log_limit: LogLimit::new(),
        dma,
    }));
    let mut vcpus = Vec::new();
    for i in 0..d.cpus {
        // A client's boot waits for its service (Vm::start_held).
        let boot = i == 0 && client_of.is_none();
        let mut regs = GuestRegs::new();
        if boot {
            regs.pc = entry;
            regs.x[0] = placement.dtb;
            regs.pstate = PSTATE_EL1H_MASKED;
        }
        let v: &'static Vcpu = Box::leak(Box::new(Vcpu {
            vm,
            index: i,
            pcpu: d.pcpus[i] as usize,
            mpidr: layout::vcpu_mpidr(i),
            power: VcpuPower::new(if boot {
                PowerState::On
            } else {
                PowerState::Off
            }),
            running: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            debug: debug::DebugState::new(),
            exits: AtomicU64::new(0),
            irq_exits: AtomicU64::new(0),
            last_pc: AtomicU64::new(0),
            vpe: if pcie.is_some() {
                crate::gic::vpe::create(d.pcpus[i] as usize).unwrap_or_else(|e| {
                    log::error!(
                        "vm {}: vCPU {i}: no GICv4 vPE ({e}); its passthrough MSIs take the list-register path",
                        d.name
                    );
                    None
                })
            } else {
                None
            },
            state: Mutex::new(VcpuState {
                regs,
                el1: El1Regs::reset(),
                pauth: PauthKeys::default(),
                cpuif: CpuIfContext::default(),
            }),
        }));
        vcpus.push(v);
    }
    vm.vcpus.call_once(|| vcpus);
    VM_BY_ID[id].call_once(|| vm);
    if let Some(dma) = &vm.dma {
        dma.assign(id).map_err(VmError::Smmu)?;
        log::info!(
            "vm {}: its devices' DMA translated by the SMMU (StreamIDs {:#x}..{:#x}, VMID {}): its RAM and the ITS doorbell only",
            vm.name,
            dma.sids.start,
            dma.sids.end,
            dma.vmid
        );
    }
    for v in vm.vcpus() {
        RUNQ[v.pcpu].lock().push(v);
    }
    log::info!(
        "vm {}: {} vCPUs on CPUs {:?}, {} MiB RAM at IPA {:#x} (PA {:#x}), entry {:#x}, device tree {:#x}{}",
        vm.name,
        d.cpus,
        &d.pcpus[..d.cpus],
        size >> 20,
        ipa,
        pa,
        entry,
        placement.dtb,
        match placement.initrd {
            Some(at) => alloc::format!(", initrd {at:#x}"),
            None => String::new(),
        }
    );
    Ok(vm)
}

/// The SMMU's view of VM `id`'s passed-through devices: stage-2 tables
/// that map its RAM (IPA `ipa`, host-physical `pa`, `size` bytes) and the
/// ITS translation frame at the vITS's address (the doorbell their MSIs
/// write), nothing else; and their StreamIDs: every requester ID on the
/// bridge's buses, through its `iommu-map`. The STEs are written once
/// the VM exists ([`Dma::assign`]).
fn dma_tables(
    vmid: u16,
    p: &PcieHost<'_>,
    smmu: &crate::smmu::Smmu,
    ipa: u64,
    pa: u64,
    size: u64,
) -> Result<Dma, VmError> {
    if ipa + size > 1u64 << smmu.ias() {
        return Err(VmError::Smmu(crate::smmu::SmmuError::IpaTooLarge(
            ipa + size,
        )));
    }
    let mut tables = Stage2Tables::new(vmid);
    tables.map_ram(ipa, pa, size).map_err(VmError::Map)?;
    if let Some(its) = crate::gic::its::get() {
        tables
            .map_device(
                layout::ITS_BASE + 0x1_0000,
                its.translation_frame(),
                0x1_0000,
            )
            .map_err(VmError::Map)?;
    }
    let rids = (p.bus_range.0 << 8)..((p.bus_range.1 + 1) << 8);
    let sids = match p.iommu_map {
        Some(m) => {
            let lo = rids.start.max(m.rid);
            let hi = rids.end.min(m.rid + m.len);
            (lo - m.rid + m.sid)..(hi.max(lo) - m.rid + m.sid)
        }
        None => 0..0,
    };
    Ok(Dma { vmid, sids, tables })
}

/// Called when a VM stops: when none is left, end the run with the worst
/// status any VM reported.
fn vm_stopped() {
    if VMS_LEFT.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let status = all_vms()
        .map(|v| v.exit_status.load(Ordering::Acquire))
        .max()
        .unwrap_or(0);
    crate::smmu::check_canary();
    log::info!(
        "all VMs stopped after {} guest exits and {} vCPU switches; exiting with status {status}",
        total_exits(),
        SWITCHES.load(Ordering::Relaxed)
    );
    release_all();
    exit::exit(status);
}

/// Heap in use once every VM was created, before any ran.
static HEAP_AT_START: AtomicUsize = AtomicUsize::new(0);
/// Host LPIs free at the same moment.
static HOST_LPIS_AT_START: AtomicU32 = AtomicU32::new(0);

/// Give back what the guests made Vigil allocate (vITS devices, ITTs and
/// mappings, vGIC state, host LPIs), putting every VM's interrupt state
/// back as it was created, as a reset does, and log whether the heap is
/// back where it was before any VM ran: a difference is memory a
/// guest made Vigil allocate and never free. Runs on the CPU of the last
/// VM's stop, once the other CPUs' vCPUs are out (this CPU's own, if it
/// stopped its VM from a trap, holds no vGIC or vITS lock there).
fn release_all() {
    let me = arch::cpu_index();
    let out = arch::wait_until(2_000, || {
        all_vcpus().all(|v| v.pcpu == me || !v.running.load(Ordering::SeqCst))
    });
    if !out {
        log::warn!("exit: vCPUs still in their guests after 2 s; interrupt state not released");
        return;
    }
    for vm in all_vms() {
        vm.reset_interrupts();
    }
    virtio::release_all();
    // Host LPIs first: counting them reclaims the quarantine, whose list
    // is heap too.
    let (lpis, lpis0) = (
        passthrough::free_host_lpis(),
        HOST_LPIS_AT_START.load(Ordering::Relaxed),
    );
    let (heap, heap0) = (
        crate::mm::heap_in_use(),
        HEAP_AT_START.load(Ordering::Relaxed),
    );
    if heap != heap0 || lpis != lpis0 {
        log::error!(
            "exit: every VM's vITS and vGIC state released, but heap in use {heap} bytes ({heap0} before the VMs ran) and {lpis} host LPIs free ({lpis0} before): a leak"
        );
    } else {
        log::info!(
            "exit: every VM's vITS and vGIC state released; heap back to {heap} bytes in use, {lpis} host LPIs free, as before the VMs ran"
        );
    }
}

/// How many VMs exist.
pub fn count() -> usize {
    VM_COUNT.load(Ordering::Relaxed)
}

static VM_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The name of VM `id` (for console tags).
pub fn name(id: usize) -> &'static str {
    vm_by_id(id).map_or("vm?", |v| v.name)
}

/// Move bytes typed on the console into the receive FIFO of the VM with
/// the focus, as long as it has room. When it is full, the console's
/// receive interrupt is masked until the guest reads a byte (flow control:
/// no keystroke is dropped).
pub fn console_input_pump() {
    let Some(vm) = vm_by_id(FOCUS.load(Ordering::Relaxed)) else {
        // No VM to type into: drain and drop.
        while crate::console::try_read().is_some() {}
        return;
    };
    while vm.uart.has_room() {
        let Some(b) = crate::console::try_read() else {
            return;
        };
        // Ctrl-A is the escape: Ctrl-A n moves the focus to the next VM,
        // Ctrl-A x quits, Ctrl-A Ctrl-A types one Ctrl-A (QEMU's own
        // escape is not used: its monitor is off, and Ctrl-C is a byte for
        // the guest, `signal=off`).
        if ESCAPED.swap(false, Ordering::Relaxed) {
            match b {
                b'n' => {
                    next_focus();
                    // The loop goes on with the new VM's FIFO.
                    return console_input_pump();
                }
                b'x' => {
                    // The quit key (as QEMU's own mux has it): the run
                    // ends, as a failure, so a script can tell it from a
                    // clean poweroff.
                    log::warn!("console: Ctrl-A x: quitting (status 1)");
                    exit::exit(1)
                }
                b'd' => dump_state(),
                CTRL_A => vm.uart.receive(CTRL_A),
                other => {
                    vm.uart.receive(CTRL_A);
                    if vm.uart.has_room() {
                        vm.uart.receive(other);
                    }
                }
            }
        } else if b == CTRL_A {
            ESCAPED.store(true, Ordering::Relaxed);
        } else {
            vm.uart.receive(b);
        }
    }
    crate::console::set_rx_interrupt(false);
    INPUT_PAUSED.store(true, Ordering::Release);
}

/// Ctrl-A d: one line per physical CPU and per vCPU on where each is and
/// what interrupts it has, for a hang that logs nothing. It takes no lock
/// that a stuck CPU could hold: the counters are atomics and the vGIC's
/// state is only read if its lock is free.
fn dump_state() {
    log::info!(
        "state dump: {} guest exits, {} vCPU switches",
        total_exits(),
        SWITCHES.load(Ordering::Relaxed)
    );
    for cpu in (0..crate::percpu::count())
        .filter(|&c| crate::percpu::get(c).online.load(Ordering::Relaxed))
    {
        let queued = RUNQ[cpu].try_lock().map(|q| q.len());
        match loaded_on(cpu) {
            Some(v) => log::info!(
                "  cpu{cpu}: vm {} vcpu {} loaded, run queue {queued:?}",
                v.vm.name,
                v.index
            ),
            None => log::info!("  cpu{cpu}: no vCPU loaded, run queue {queued:?}"),
        }
    }
    for vm in all_vms() {
        log::info!(
            "  vm {}: {:?}, vITS commands unfinished {}",
            vm.name,
            vm.state(),
            vm.its.has_unfinished_commands()
        );
        for v in vm.vcpus() {
            let mut gic = alloc::string::String::new();
            let _ = vm.gic.describe(v.index, &mut gic);
            log::info!(
                "    vcpu {} on cpu{}: {:?}, running {}, waiting {}, {} exits, pc {:#x}; vGIC: {gic}",
                v.index,
                v.pcpu,
                v.power.state(),
                v.running.load(Ordering::Relaxed),
                v.waiting.load(Ordering::Relaxed),
                v.exits.load(Ordering::Relaxed),
                v.last_pc.load(Ordering::Relaxed),
            );
        }
    }
}

const CTRL_A: u8 = 0x01;
/// A Ctrl-A was typed and the next byte says what it means.
static ESCAPED: AtomicBool = AtomicBool::new(false);

/// Give the console's input to the next running VM.
fn next_focus() {
    let n = count();
    let from = FOCUS.load(Ordering::Relaxed);
    for step in 1..=n {
        let id = (from + step) % n;
        if vm_by_id(id).is_some_and(|v| !v.is_stopped()) {
            FOCUS.store(id, Ordering::Relaxed);
            log::info!(
                "console input now goes to vm {} (Ctrl-A n for the next)",
                name(id)
            );
            INPUT_PAUSED.store(false, Ordering::Release);
            crate::console::set_rx_interrupt(true);
            return;
        }
    }
}

/// The console's receive interrupt is masked until the focused VM reads.
static INPUT_PAUSED: AtomicBool = AtomicBool::new(false);

/// The focused VM read from its receive FIFO: resume console input.
pub fn console_input_resume(vm: usize) {
    if vm == FOCUS.load(Ordering::Relaxed) && INPUT_PAUSED.swap(false, Ordering::AcqRel) {
        crate::console::set_rx_interrupt(true);
    }
}

/// Make `v`'s state the one loaded on this CPU.
fn load(v: &'static Vcpu, st: &mut VcpuState, shared: bool) {
    let cpu = arch::cpu_index();
    let prev = LOADED[cpu].load(Ordering::Relaxed);
    let me = v as *const Vcpu as usize;
    if prev == me {
        return;
    }
    if prev != 0 {
        // SAFETY: LOADED only holds addresses of leaked, never-freed
        // vCPUs.
        let p: &Vcpu = unsafe { &*(prev as *const Vcpu) };
        let mut ps = p.state.lock();
        ps.el1.save();
        switch::save_fp(&mut ps.regs);
        if HAS_PAUTH.load(Ordering::Relaxed) {
            ps.pauth.save();
        }
        vgic_glue::save_cpuif(&mut ps.cpuif);
        vgic_glue::release_timers();
    }
    st.el1.restore();
    switch::restore_fp(&st.regs);
    if HAS_PAUTH.load(Ordering::Relaxed) {
        st.pauth.restore();
    }
    vgic_glue::restore_cpuif(&st.cpuif);
    vgic_glue::forget_loaded();
    debug::switch_to(&v.debug, st.el1.mdscr);
    sysreg::set_vmpidr_el2((1 << 31) | v.mpidr);
    // SAFETY: the VM's own stage-2 tables and VMID (built at creation,
    // never freed), for the vCPU about to run; hcr_guest keeps stage 2 on
    // and IRQs at EL2. The ISB follows.
    unsafe {
        sysreg::set_vttbr_el2(v.vm.vttbr);
        sysreg::set_hcr_el2(trap::hcr_guest(shared, false));
    }
    sysreg::isb();
    LOADED[cpu].store(me, Ordering::Relaxed);
    SWITCHES.fetch_add(1, Ordering::Relaxed);
}

/// Run vCPU `v` on this CPU until it goes off, its VM stops, or it waits
/// with other vCPUs to run here.
/// `shared`: other vCPUs are queued on this CPU too (fixed once VMs are
/// created), so a yield, a WFI or the end of a slice gives the CPU up.
fn run(v: &'static Vcpu, shared: bool) {
    let cpu = arch::cpu_index();
    let mut st = v.state.lock();
    if let Some((entry, context)) = v.power.take_boot() {
        // CPU_ON: a fresh vCPU (DEN 0022 §6.4: MMU off, EL1h, x0 = context).
        st.regs = GuestRegs::new();
        st.regs.pc = entry;
        st.regs.x[0] = context;
        st.regs.pstate = PSTATE_EL1H_MASKED;
        st.el1 = El1Regs::reset();
        st.cpuif = CpuIfContext::default();
        debug::reset(&v.debug);
        if LOADED[cpu].load(Ordering::Relaxed) == v as *const Vcpu as usize {
            st.el1.restore();
            switch::restore_fp(&st.regs);
            vgic_glue::restore_cpuif(&st.cpuif);
        }
    }
    // Published before the state is read (both SeqCst): a reset that
    // waits for `running` to clear either sees this vCPU running or is
    // seen by its loop below, which then does not enter.
    v.running.store(true, Ordering::SeqCst);
    load(v, &mut st, shared);
    CURRENT_REGS[cpu].store(&mut st.regs as *mut GuestRegs as u64, Ordering::Relaxed);
    v.waiting.store(false, Ordering::Relaxed);
    // Its vPE is resident whenever it is in its guest; the exceptions are
    // a guest with LPIs off, tried again after each wait and IRQ exit (a
    // vLPI rings the doorbell meanwhile: an IRQ exit).
    if let Some(p) = v.vpe {
        v.make_resident(p);
    }
    loop {
        if !v.vm.is_running() || v.power.state() != PowerState::On {
            break;
        }
        if v.vm.its.has_unfinished_commands() {
            // The next slice of its ITS command queue (bounded work per
            // entry: a long queue cannot hold this CPU past a time slice).
            v.vm.kick(v.vm.its.resume(v.vm));
            if !shared && v.vm.its.has_unfinished_commands() {
                // Alone on its CPU: a WFI comes here to run the rest
                // rather than sleep on it (cleared at that WFI).
                set_wfi_trap(true);
            }
        }
        v.vm.kick(vgic_glue::enter(&v.vm.gic, v.index));
        // SAFETY: the registers are this CPU's CURRENT_REGS entry, held
        // under the vCPU lock for the whole call; stage 2 and EL1 state
        // were loaded by `load`.
        let kind = unsafe { switch::__guest_enter(&mut st.regs) };
        v.exits
            .store(v.exits.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        v.last_pc.store(st.regs.pc, Ordering::Relaxed);
        v.vm.kick(vgic_glue::exit(&v.vm.gic, v.index));
        match trap::handle_exit(v, &mut st.regs, kind) {
            trap::Exit::Continue => {
                if SLICE_OVER[cpu].swap(false, Ordering::Relaxed) && shared {
                    break;
                }
            }
            trap::Exit::Yield => {
                if shared {
                    break;
                }
            }
            trap::Exit::Wait => {
                // WFI: let another vCPU of this CPU run, or sleep until the
                // vCPU has an interrupt to take (or is kicked).
                // Queued ITS commands are work too: they run at the next
                // entry, not while the vCPU sleeps.
                // A direct vLPI pending (PendingLast) is one to take; from
                // the deschedule on, a new one rings the doorbell.
                let vlpi = v.vpe.is_some_and(|p| p.deschedule());
                if vlpi {
                    // Re-entered with its vPE resident again: it takes it.
                } else if shared {
                    if !v.has_work() {
                        v.waiting.store(true, Ordering::Relaxed);
                        break;
                    }
                } else {
                    if !v.vm.its.has_unfinished_commands() {
                        // Trapped for the ITS commands, which are done:
                        // wait in the guest again from the next entry.
                        set_wfi_trap(false);
                    }
                    while !v.has_work() && v.vm.is_running() && v.power.state() == PowerState::On {
                        wait_for_interrupt();
                    }
                }
                if let Some(p) = v.vpe {
                    v.make_resident(p);
                }
            }
            trap::Exit::Off => break,
        }
    }
    if let Some(p) = v.vpe {
        // Not running: its vLPIs ring the doorbell, which makes it
        // wakeable. One pending already is seen by `wakeable` too.
        if p.deschedule() {
            p.mark_pending();
        }
    }
    v.running.store(false, Ordering::SeqCst);
    drop(st);
    if v.vm.reset_by.load(Ordering::SeqCst) == v.index {
        v.vm.finish_reset();
    }
}

/// On a CPU whose one vCPU is loaded, trap WFI (`on`) or not: while its
/// ITS commands wait for their next slice, a WFI must come here to run
/// them rather than sleep in the guest. HCR_EL2 itself says whether it
/// traps now; it is written only when that changes, and the ERET that
/// enters the guest synchronizes it.
#[cold]
fn set_wfi_trap(on: bool) {
    let hcr = trap::hcr_guest(false, on);
    if sysreg::hcr_el2() != hcr {
        // SAFETY: the same guest configuration, WFI trapped or not.
        unsafe { sysreg::set_hcr_el2(hcr) };
    }
}

impl Vcpu {
    /// Whether a waiting vCPU has something to do: an interrupt to take
    /// (in the vGIC, or a direct vLPI whose doorbell rang) or ITS
    /// commands to run.
    fn has_work(&self) -> bool {
        self.vm.gic.has_deliverable(self.index)
            || self.vm.its.has_unfinished_commands()
            || self.vpe.is_some_and(|p| p.rang())
    }

    /// An exit for a physical interrupt (only its CPU counts). Its vPE
    /// is made resident if it could not be before (see `run`).
    #[inline(never)]
    fn count_irq_exit(&self) {
        self.irq_exits.store(
            self.irq_exits.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        if let Some(p) = self.vpe {
            self.make_resident(p);
        }
    }

    /// Make its vPE resident on this CPU (if it is not), with the guest's own LPI
    /// configuration table (GICR_PROPBASER, translated to host-physical).
    /// Not while LPIs are off on its redistributor or the table is not
    /// all in RAM: its vLPIs wait in the pending table then, as they
    /// would on hardware with LPIs disabled, and take their turn once the
    /// guest enables them.
    #[cold]
    #[inline(never)]
    fn make_resident(&self, p: &crate::gic::vpe::Vpe) {
        if p.is_resident() {
            return;
        }
        let (propbaser, enabled) = {
            let st = self.vm.gic.lock();
            (st.propbaser(), st.lpis_enabled(self.index))
        };
        if !enabled {
            // A doorbell rung while LPIs are off woke it for nothing.
            p.forget_rang();
            return;
        }
        let id_bits = ((propbaser & 0x1f) as u8 + 1).min(p.id_bits);
        let ipa = propbaser & vigil_gic::regs::PROPBASER_PA;
        let len = (1u64 << id_bits).saturating_sub(u64::from(vigil_gic::LPI_BASE));
        match self.vm.ram_pa(ipa, len) {
            Some(pa) => p.schedule(pa, id_bits),
            None => {
                if self.vm.log_limit.allow() {
                    log::warn!(
                        "vm {}: vCPU {}: LPI configuration table at {ipa:#x} not in RAM; its direct vLPIs wait",
                        self.vm.name,
                        self.index
                    );
                }
            }
        }
    }

    /// Whether the scheduler may run it: powered on (or starting) and, if
    /// it waits, with something to do: an interrupt to take, ITS commands
    /// to run, or an EL1 timer whose deadline passed. A vCPU waiting on a
    /// shared CPU is not entered just to wait again: that would keep the
    /// CPU busy while all its vCPUs idle. It is called on this vCPU's own
    /// CPU, where nothing else runs it.
    fn wakeable(&self) -> bool {
        if !self.vm.is_running() {
            return false;
        }
        match self.power.state() {
            PowerState::OnPending => return true,
            PowerState::On => {}
            _ => return false,
        }
        if !self.waiting.load(Ordering::Relaxed) {
            return true;
        }
        if self.has_work() {
            return true;
        }
        // The vCPU loaded here has its timers live: their interrupts make
        // it deliverable when they fire. Another's are in its saved state.
        if LOADED[self.pcpu].load(Ordering::Relaxed) == self as *const Vcpu as usize {
            return false;
        }
        let el1 = self.state.lock().el1;
        // CNTVOFF_EL2 is 0: both timers compare against the physical count.
        let now = arch::counter();
        let due = |ctl: u64, cval: u64| ctl & 0b11 == 0b01 && now >= cval;
        due(el1.cntv_ctl, el1.cntv_cval) || due(el1.cntp_ctl, el1.cntp_cval)
    }
}

/// Sleep until an interrupt, then handle it (IRQs stay masked in the
/// hypervisor otherwise).
fn wait_for_interrupt() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
    aarch64_cpu::asm::wfi();
    gic::handle_irq();
}

/// Set once VMs exist: idle CPUs then enter [`schedule`].
static STARTED: AtomicBool = AtomicBool::new(false);

pub fn started() -> bool {
    STARTED.load(Ordering::Acquire)
}

/// Let every CPU into [`schedule`].
pub fn start() {
    HEAP_AT_START.store(crate::mm::heap_in_use(), Ordering::Relaxed);
    HOST_LPIS_AT_START.store(passthrough::free_host_lpis(), Ordering::Relaxed);
    crate::timer::set_hook(on_tick);
    STARTED.store(true, Ordering::Release);
    // Every other CPU at once (IRM = 1): one write however many there
    // are.
    gic::broadcast_sgi(SGI_KICK);
}

/// The scheduler loop of every physical CPU once VMs exist. Interrupts
/// stay masked in the hypervisor: a waiting CPU wakes on a pending one and
/// handles it synchronously.
pub fn schedule() -> ! {
    arch::sysreg::irq_disable();
    let cpu = arch::cpu_index();
    // The run queues are complete before `start` lets CPUs in here.
    let shared = RUNQ[cpu].lock().len() > 1;
    if shared {
        // Several vCPUs share this CPU: time-slice them.
        crate::timer::start(SLICE_HZ);
    }
    loop {
        let next = {
            let mut q = RUNQ[cpu].lock();
            // Waiting vCPUs are looked at on every pass: a kick, a device
            // interrupt or the slice tick (every 4 ms on a shared CPU,
            // which bounds how late a descheduled vCPU's timer is seen)
            // wakes this CPU.
            let pos = q.iter().position(|v| v.wakeable());
            // Round robin: the chosen vCPU goes to the back of the queue.
            pos.map(|i| {
                let v = q.remove(i);
                q.push(v);
                v
            })
        };
        match next {
            Some(v) => run(v, shared),
            None => wait_for_interrupt(),
        }
    }
}

/// Time slices per second when vCPUs share a physical CPU.
const SLICE_HZ: u64 = 250;
/// Per physical CPU: a time slice ended (set by the EL2 tick).
static SLICE_OVER: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// vCPU switches (EL1 state reloaded), for the log.
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);

/// The EL2 tick: end the running vCPU's slice.
pub fn on_tick() {
    SLICE_OVER[arch::cpu_index()].store(true, Ordering::Relaxed);
}
