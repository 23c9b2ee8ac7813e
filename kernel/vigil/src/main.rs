//! Vigil: a bare-metal AArch64 hypervisor.
//!
//! Boot flow on the primary CPU: early console, platform discovery from
//! QEMU's device tree, frame allocator and heap, EL2 stage-1 MMU, then the
//! secondaries through PSCI. See `../../shared/DESIGN.md` for the design.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod bus;
mod console;
mod exit;
mod gic;
mod ktest;
mod logger;
mod mm;
mod percpu;
mod psci;
mod regblock;
mod smmu;
mod smp;
mod timer;
mod vgic;
mod vits;
mod vm;

use vigil_board_qemu_virt as board;
use vigil_platform::{BootArgs, Platform, Region};

/// Options Vigil understands on its command line.
const KNOWN_OPTIONS: &[&str] = &[
    "vigil.test",
    "vigil.log",
    "vigil.its",
    "vigil.gicv4",
    "vigil.exit",
    "vigil.dma_canary",
];

/// The device tree QEMU left at the base of RAM.
fn device_tree() -> Result<&'static [u8], &'static str> {
    let addr = board::DTB_ADDR as *const u8;
    // SAFETY: QEMU's RAM starts at DTB_ADDR and the 8-byte FDT header is
    // readable there whatever it holds; with the MMU off this is a plain
    // physical read.
    let header = unsafe { core::slice::from_raw_parts(addr, 8) };
    let size = vigil_platform::dtb_total_size(header)
        .ok_or("no device tree at the base of RAM (is this QEMU virt with an ELF kernel?)")?;
    if size as u64 > board::DTB_MAX_SIZE {
        return Err("device tree larger than the space reserved for it");
    }
    // SAFETY: the header says the blob is `size` bytes; that range is RAM
    // reserved from the frame allocator and never written.
    Ok(unsafe { core::slice::from_raw_parts(addr, size) })
}

fn fatal(what: core::fmt::Arguments<'_>) -> ! {
    console::emergency_println(what);
    exit::exit_failure()
}

#[no_mangle]
extern "C" fn kmain() -> ! {
    // The rooms below report upward through these hooks (arch's exception
    // vectors; the console's VM tags; vgic's guest-timer interrupt, whose
    // owner is the vCPU the scheduler loaded).
    arch::exceptions::set_handlers(arch::exceptions::Handlers {
        irq: gic::handle_irq,
        report: console::emergency_println,
        fail: exit::exit_failure,
    });
    console::set_vm_names(vm::count, vm::name);
    vgic::set_timer_owner(vm::timer_fired);
    console::init(board::EARLY_UART);
    let dtb = device_tree().unwrap_or_else(|e| fatal(format_args!("boot: {e}")));
    let platform: Platform<'static> = vigil_platform::discover(dtb)
        .unwrap_or_else(|e| fatal(format_args!("boot: device tree: {e}")));
    console::init(platform.uart.base);
    let args = BootArgs::new(platform.bootargs);
    logger::init(args.get("vigil.log"));
    // First, so that every later failure ends QEMU with a failing status.
    exit::init(args.get("vigil.exit"), platform.pcie.as_ref())
        .unwrap_or_else(|e| fatal(format_args!("boot: {e}")));
    for unknown in args.unknown("vigil.", KNOWN_OPTIONS) {
        log::warn!("ignoring unknown boot option {unknown}");
    }

    if platform.cpus.index_of(arch::mpidr()) != Some(0) {
        fatal(format_args!(
            "boot: the boot CPU (MPIDR {:#x}) is not the first CPU of /cpus",
            arch::mpidr()
        ));
    }

    // Keep the device tree and the guest images QEMU loaded out of the
    // frame allocator's hands.
    let mut reserved = [Region::new(0, 0); 1 + 2 * vigil_platform::MAX_VMS];
    reserved[0] = Region::new(board::DTB_ADDR, dtb.len() as u64);
    let mut n = 1;
    let vms = vigil_platform::for_each_domain(dtb, |d| {
        for r in core::iter::once(d.kernel).chain(d.ramdisk) {
            reserved[n] = r;
            n += 1;
        }
    })
    .unwrap_or_else(|e| fatal(format_args!("boot: guest description: {e}")));
    for r in &reserved[1..n] {
        if !platform.memory.contains(r.base) || r.end() > platform.memory.end() {
            fatal(format_args!(
                "boot: a guest image at {:#x}..{:#x} is outside RAM",
                r.base,
                r.end()
            ));
        }
    }
    let mem = mm::init(platform.memory, &reserved[..n], mm::heap_size(vms))
        .unwrap_or_else(|e| fatal(format_args!("boot: memory: {e}")));

    if !arch::mmu::check_stack_layout() {
        fatal(format_args!(
            "boot: linker script and boot code disagree on stacks"
        ));
    }
    // Per-CPU records and stacks for the CPUs the device tree lists.
    percpu::init(&platform.cpus);
    arch::boot::alloc_stacks(platform.cpus.len(), mm::alloc_frames_uncleared).unwrap_or_else(|e| {
        fatal(format_args!(
            "boot: stacks for {} CPUs: {e}",
            platform.cpus.len()
        ))
    });
    // The board's device space, and the GIC's frames wherever the device
    // tree puts them (the redistributor regions above all: QEMU adds one
    // at 256 GiB past 123 CPUs).
    let gic_frames = core::iter::once(platform.gic.gicd)
        .chain(platform.gic.redistributor_regions().iter().copied())
        .chain(platform.gic.its);
    let devices: alloc::vec::Vec<arch::mmu::DeviceRange> =
        [board::LOW_DEVICE_SPACE, board::HIGH_DEVICE_SPACE]
            .into_iter()
            .chain(gic_frames.map(|r| (r.base, r.end())))
            .map(|(start, end)| arch::mmu::DeviceRange { start, end })
            .collect();
    arch::mmu::init((platform.memory.base, platform.memory.end()), &devices)
        .unwrap_or_else(|e| fatal(format_args!("boot: page tables: {e}")));

    let image = mm::image();
    log::info!("Vigil {} starting", env!("CARGO_PKG_VERSION"));
    log::info!("exit status through {}", exit::describe());
    log::info!(
        "RAM {:#x}..{:#x} ({} MiB), image {:#x}..{:#x}, frame bitmap {:#x}, heap {:#x}..{:#x} ({} MiB for {vms} VMs), {} frames free",
        platform.memory.base,
        platform.memory.end(),
        platform.memory.size >> 20,
        image.base,
        image.end(),
        mem.bitmap.base,
        mem.heap.base,
        mem.heap.end(),
        mem.heap.size >> 20,
        mem.free_frames
    );
    log::info!(
        "GICD {:#x}, GICR {}, ITS {}, UART {:#x}",
        platform.gic.gicd.base,
        Regions(platform.gic.redistributor_regions()),
        OptAddr(platform.gic.its),
        platform.uart.base
    );
    let (major, minor) = psci::version();
    log::info!(
        "{} CPUs in the device tree; PSCI {major}.{minor} over {:?}",
        platform.cpus.len(),
        platform.psci.unwrap_or(vigil_platform::PsciConduit::Smc)
    );

    gic::init(platform.gic, &platform.cpus)
        .unwrap_or_else(|e| fatal(format_args!("boot: GIC: {e}")));
    gic::init_cpu().unwrap_or_else(|e| fatal(format_args!("boot: GIC on cpu0: {e}")));
    timer::init(platform.timer.hyp);
    vm::init_cpu();
    vgic::init_cpu();
    if let Some(its) = platform.gic.its {
        let flat = match args.get("vigil.its") {
            None => false,
            Some("flat") => true,
            Some(other) => fatal(format_args!(
                "boot: vigil.its={other}: expected vigil.its=flat"
            )),
        };
        let gicv4 = match args.get("vigil.gicv4") {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => fatal(format_args!(
                "boot: vigil.gicv4={other}: expected vigil.gicv4=on or off"
            )),
        };
        gic::its::init(its.base, platform.cpus.len(), flat, gicv4)
            .unwrap_or_else(|e| fatal(format_args!("boot: ITS: {e}")));
    }
    if let Some(info) = platform.smmu {
        if let Err(e) = smmu::init(info) {
            log::error!(
                "boot: SMMU: {e}; PCIe passthrough only to identity-mapped VMs, their DMA unconfined"
            );
        }
    }
    arch::sysreg::irq_enable();

    smp::announce();
    let started = arch::counter();
    let online = smp::start_secondaries(&platform.cpus, 0);
    log::info!(
        "{online} of {} CPUs online, in {} ms",
        platform.cpus.len(),
        (arch::counter() - started) * 1000 / arch::counter_freq()
    );

    if let Some(name) = args.get("vigil.test") {
        ktest::run(name, &platform);
    }

    if let Some(r) = platform.rtc {
        vm::rtc::set_host(r.base);
    }
    if let Some(a) = args.get("vigil.dma_canary") {
        let addr = u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap_or_else(|_| {
            fatal(format_args!(
                "boot: vigil.dma_canary={a}: not a hex address"
            ))
        });
        smmu::set_canary(addr)
            .unwrap_or_else(|e| fatal(format_args!("boot: vigil.dma_canary={a}: {e}")));
    }
    let domains = vigil_platform::domains(dtb)
        .unwrap_or_else(|e| fatal(format_args!("boot: guest description: {e}")));
    vm::passthrough::init();
    let vms = vm::create_all(&domains, online, platform.pcie)
        .unwrap_or_else(|e| fatal(format_args!("boot: creating VMs: {e}")));
    if vms == 0 {
        log::info!("boot complete; no guest configured, exiting");
        exit::exit_success()
    }
    if let Some(intid) = platform.uart_irq {
        gic::register(intid, on_console_rx);
        console::set_rx_interrupt(true);
        gic::enable_spi(intid, arch::mpidr());
    }
    vm::start();
    vm::schedule()
}

/// Bytes typed on the console go to the VM with the focus.
fn on_console_rx(_intid: u32) {
    vm::console_input_pump();
}

/// Regions as "base (+size)", comma-separated.
struct Regions<'a>(&'a [Region]);

impl core::fmt::Display for Regions<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{:#x} (+{:#x})", r.base, r.size)?;
        }
        Ok(())
    }
}

struct OptAddr(Option<Region>);

impl core::fmt::Display for OptAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{:#x}", r.base),
            None => f.write_str("none"),
        }
    }
}

#[no_mangle]
extern "C" fn secondary_main(_index: usize) -> ! {
    if let Err(e) = gic::init_cpu() {
        fatal(format_args!("GIC on cpu{}: {e}", arch::cpu_index()));
    }
    vm::init_cpu();
    vgic::init_cpu();
    arch::sysreg::irq_enable();
    smp::announce();
    // Idle until VMs exist; until then everything this CPU does runs in
    // interrupt handlers (the in-kernel test scenarios).
    loop {
        aarch64_cpu::asm::wfi();
        if vm::started() {
            vm::schedule();
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::emergency_println(format_args!("panic: {info}"));
    exit::exit_failure()
}
