//! Vigil's in-project test guest: one image, the scenario chosen by
//! `vigil.guest=<name>` in the bootargs. Each prints "guest: ..." lines and
//! ends with "guest: <scenario>: PASS" (exit status 0) or
//! "guest: <scenario>: FAIL: <why>" (exit status 1).

#![no_std]
#![no_main]

extern crate alloc;

mod bench;
mod blksvc;
mod debug;
mod dma;
mod echo;
mod hostile;
mod isolation;
mod mmio;
mod passthrough;
mod psci;
mod ptimer;
mod regs;
mod reset;
mod resetstorm;
mod selftest;
mod semihost;
mod unhandled;
mod vgic;
mod vhostile;
mod vits;

use vigil_guest::{cpu, exit, println, report, BootInfo};

vigil_guest::entry!(main);

fn main(boot: &'static BootInfo) -> ! {
    let Some(scenario) = boot.scenario() else {
        println!("no vigil.guest=<scenario> in bootargs '{}'", boot.bootargs);
        exit(1)
    };
    println!(
        "{scenario}: {} vCPUs, RAM {:#x}..{:#x}, DTB at {:#x}{}, {}",
        boot.cpus().len(),
        boot.ram.start,
        boot.ram.end,
        boot.dtb,
        if boot.dtb_from_x0 {
            ""
        } else {
            " (not from x0)"
        },
        if boot.vigil {
            "Vigil hypercalls answer"
        } else {
            "no Vigil hypercalls (bare QEMU?)"
        }
    );
    match scenario {
        "hello" => hello(),
        "blk-service" => blksvc::run(boot),
        "virtio-hostile" => vhostile::run(boot),
        "echo" => echo::run(boot),
        "hostile" => hostile::run(boot),
        "psci" => psci::run(boot),
        "mmio" => mmio::run(boot),
        "mmio-ram" => mmio::run_on_ram(boot),
        "isolation" => isolation::run(boot),
        "regs" => regs::run(boot),
        "reset" => reset::run(boot),
        "reset-storm" => resetstorm::run(boot),
        "unhandled" => unhandled::run(boot),
        "selftest" => selftest::run(boot),
        "semihost" => semihost::run(boot),
        "selftest-panic" => selftest::panic(),
        "selftest-fault" => selftest::fault(boot),
        "ipi" => vgic::ipi(boot),
        "prio" => vgic::prio(boot),
        "active" => vgic::active(boot),
        "vtimer" => vgic::vtimer(boot),
        "ptimer" => ptimer::run(boot),
        "debug" => debug::run(boot),
        "dma-attack" => dma::attack(boot),
        "dma-canary" => dma::canary(boot),
        "uart-level" => vgic::uart_level(boot),
        "bench" => bench::run(boot),
        "bench-yield" => bench::run_yield(boot),
        "bench-scale" => bench::run_scale(boot),
        "bench-msi" => bench::run_msi(boot),
        "its" => vits::run(boot),
        "its-fuzz" => vits::fuzz(boot),
        "msi-stress" => passthrough::run(boot),
        "its-flood" => vits::flood(boot),
        "its-hog" => vits::hog(boot),
        "its-orphan" => vits::orphan(boot),
        other => {
            println!("unknown scenario '{other}'");
            exit(1)
        }
    }
}

fn hello() -> ! {
    println!("hello from vCPU {}", cpu::index());
    report::pass("hello")
}
