//! An unmodified Linux guest (issue 7): Debian's arm64 cloud kernel boots
//! to /init on Vigil's virtual GIC and ITS with 1, 2 and 4 vCPUs, with a
//! clean log, ticking timers and IPIs, right time, and console input.

use std::collections::BTreeMap;
use std::time::Duration;
use vigil_harness::{Ending, Guest, Qemu, Run};

const TIMEOUT: Duration = Duration::from_secs(150);

fn boot(cpus: usize, init: &str) -> Run {
    Qemu::with_guests(&[Guest::linux(cpus, init)])
        .timeout(TIMEOUT)
        .run()
}

/// Lines of the guest's log that report trouble with the interrupt
/// controller, the ITS, the timer or PSCI, and every warning or error
/// Vigil itself logged.
fn complaints(run: &Run) -> Vec<String> {
    let topic = ["gic", "its", "timer", "psci", "irq", "ipi"];
    let bad = [
        "warn",
        "error",
        "fail",
        "bug",
        "broken",
        "invalid",
        "unable",
        "timed out",
        "spurious",
    ];
    run.log
        .lines()
        .filter(|l| {
            let low = l.to_lowercase();
            if l.starts_with("[linux]") {
                topic.iter().any(|t| low.contains(t)) && bad.iter().any(|b| low.contains(b))
            } else {
                l.contains(" WARN ]") || l.contains(" ERROR]") || l.contains("FATAL")
            }
        })
        .map(str::to_string)
        .collect()
}

fn check_boot(run: &Run, cpus: usize) {
    let online = format!("VIGIL-INIT: cpus online {cpus}");
    let mut want = vec![
        "Linux version",
        "psci: PSCIv1.1 detected in firmware.",
        "GICv3: CPU0: found redistributor 0 region 0:0x00000000080a0000",
        "ITS [mem 0x08080000-0x0809ffff]",
        "ITS@0x0000000008080000: allocated 8192 Devices",
        "ITS@0x0000000008080000: allocated 8192 Interrupt Collections",
        "arch_timer: cp15 timer(s) running at",
        "Run /init as init process",
        online.as_str(),
        "vm linux: powered off (PSCI SYSTEM_OFF), status 0",
    ];
    let smp = format!("smp: Brought up 1 node, {cpus} CPUs");
    if cpus > 1 {
        want.push(smp.as_str());
    }
    run.check(&want).unwrap();
    let c = complaints(run);
    assert!(
        c.is_empty(),
        "complaints:\n{}\n--- log ---\n{}",
        c.join("\n"),
        run.log
    );
}

#[test]
fn linux_boots_with_one_vcpu() {
    check_boot(&boot(1, "poweroff"), 1);
}

#[test]
fn linux_boots_with_two_vcpus() {
    check_boot(&boot(2, "poweroff"), 2);
}

/// /proc/interrupts between two points, per row and CPU.
fn interrupts(run: &Run, label: &str) -> BTreeMap<String, Vec<u64>> {
    let begin = format!("VIGIL-INIT: interrupts begin {label}");
    let end = format!("VIGIL-INIT: interrupts end {label}");
    let mut rows = BTreeMap::new();
    let mut inside = false;
    for l in run.log.lines() {
        let l = l.strip_prefix("[linux] ").unwrap_or(l);
        if l.contains(&begin) {
            inside = true;
            continue;
        }
        if l.contains(&end) {
            break;
        }
        if !inside {
            continue;
        }
        let mut words = l.split_whitespace();
        let Some(name) = words.next().filter(|w| w.ends_with(':')) else {
            continue;
        };
        let counts: Vec<u64> = words.map_while(|w| w.parse().ok()).collect();
        let desc: String = l
            .split_whitespace()
            .skip(1 + counts.len())
            .collect::<Vec<_>>()
            .join(" ");
        rows.insert(format!("{name} {desc}"), counts);
    }
    assert!(
        !rows.is_empty(),
        "no /proc/interrupts for {label}:\n{}",
        run.log
    );
    rows
}

/// Between the two /proc/interrupts snapshots of `irqs` mode, the timer
/// and IPI counts rose on each of the `n` vCPUs: init runs a short sleep
/// pinned to each vCPU (tests/linux/init, `pinned_work`), so every vCPU
/// takes a timer interrupt and IPIs (being started on and waking the
/// parent from). An idle vCPU left alone promises neither in a second
/// (issue 23).
fn assert_ticks_and_ipis_rise_on_every_vcpu(run: &Run, n: usize) {
    let before = interrupts(run, "irqs-before");
    let after = interrupts(run, "irqs-after");
    let row = |m: &BTreeMap<String, Vec<u64>>, key: &str| -> Vec<u64> {
        m.iter()
            .find(|(k, _)| k.contains(key))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} row:\n{}", run.log))
    };
    let (t0, t1) = (row(&before, "arch_timer"), row(&after, "arch_timer"));
    assert_eq!(t0.len(), n, "{t0:?}");
    for cpu in 0..n {
        assert!(
            t1[cpu] > t0[cpu],
            "arch_timer did not rise on CPU{cpu}: {t0:?} -> {t1:?}"
        );
    }
    assert!(
        run.lines_with("VIGIL-INIT: taskset").next().is_none(),
        "init could not pin work to a CPU:\n{}",
        run.log
    );
    // IPIs: summed over the IPI rows (which kind a wake-up sends, reschedule
    // or function call, is the scheduler's choice).
    let ipis = |m: &BTreeMap<String, Vec<u64>>| -> Vec<u64> {
        (0..n)
            .map(|c| {
                m.iter()
                    .filter(|(k, _)| k.starts_with("IPI"))
                    .map(|(_, v)| v[c])
                    .sum()
            })
            .collect()
    };
    let (i0, i1) = (ipis(&before), ipis(&after));
    for cpu in 0..n {
        assert!(
            i1[cpu] > i0[cpu],
            "IPIs did not rise on CPU{cpu}: {i0:?} -> {i1:?}"
        );
    }
}

/// Four vCPUs: all online, timer ticks and IPIs rising on each, and
/// `sleep 1` takes about one second.
#[test]
fn linux_with_four_vcpus_ticks_and_sleeps_right() {
    let run = boot(4, "irqs,sleep,poweroff");
    check_boot(&run, 4);
    assert_ticks_and_ipis_rise_on_every_vcpu(&run, 4);
    let took: f64 = run
        .lines_with("VIGIL-INIT: sleep 1 took ")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no sleep timing:\n{}", run.log));
    // Never early; late by at most what a loaded host can add to waking
    // a descheduled vCPU (this is the guest's own clock on both sides:
    // it checks the timer's wake-up, not the clock's rate).
    assert!((0.99..=3.0).contains(&took), "sleep 1 took {took} s");
}

/// Issue 22's guest acceptance: 32 vCPUs oversubscribed 2:1 on 16
/// physical CPUs (vCPU i on CPU i % 16; vCPUs 16-31 in the guest's second
/// cluster, MPIDR 0x100-0x10f): every vCPU comes online, timer ticks and
/// IPIs rise on each, and poweroff exits 0. About 40 s under TCG on two
/// host cores.
#[test]
fn linux_with_32_vcpus_on_16_cpus() {
    let pcpus: Vec<usize> = (0..32).map(|v| v % 16).collect();
    let run = Qemu::with_guests(&[Guest::linux(32, "irqs,poweroff").pcpus(&pcpus)])
        .smp(16)
        .timeout(Duration::from_secs(400))
        .run();
    check_boot(&run, 32);
    run.check(&[
        "vm linux: 32 vCPUs on CPUs [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1,",
        "GICv3: CPU16: found redistributor 100 region 0:0x00000000082a0000",
        "GICv3: CPU31: found redistributor 10f region 0:0x0000000008480000",
        "VIGIL-INIT: cpus online 32 range 0-31",
    ])
    .unwrap();
    assert_ticks_and_ipis_rise_on_every_vcpu(&run, 32);
    eprintln!("Linux with 32 vCPUs on 16 CPUs: {:?}", run.elapsed);
}

/// Typing on the console reaches the guest's shell (through the physical
/// UART, Vigil's input path and the virtual PL011's interrupt); `reboot`
/// restarts the VM (PSCI SYSTEM_RESET: Linux boots again) and `poweroff`
/// ends the run with status 0.
#[test]
fn typing_reaches_the_guest_shell_and_reboot_and_poweroff_work() {
    let run = Qemu::with_guests(&[Guest::linux(2, "shell")])
        .timeout(Duration::from_secs(240))
        .type_after("VIGIL-INIT: shell", "echo typed-$((6 * 7))\n")
        .type_after("typed-42", "reboot\n")
        .type_after_nth("VIGIL-INIT: shell", 2, "echo again-$((6 * 7))\n")
        .type_after("again-42", "poweroff\n")
        .run();
    assert_eq!(run.ending, Ending::Exited(0), "{}", run.log);
    for typed in ["typed-42", "again-42"] {
        assert!(
            run.lines_with(typed).any(|l| !l.contains("$((")),
            "{typed}:\n{}",
            run.log
        );
    }
    assert_eq!(
        run.lines_with("vm linux: reset: images reloaded").count(),
        1,
        "{}",
        run.log
    );
    assert_eq!(
        run.lines_with("Linux version").count(),
        2,
        "booted twice:\n{}",
        run.log
    );
    assert_eq!(
        run.lines_with("vm linux: powered off (PSCI SYSTEM_OFF), status 0")
            .count(),
        1
    );
}

/// Issue 19, item 8: the guest has a clock. Its PL031 (emulated per VM,
/// counting from the host's) set Linux's time at boot: `date` is within a
/// minute of the host's.
#[test]
fn the_guest_clock_follows_the_host() {
    let run = boot(1, "clock,poweroff");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let line = run
        .lines_with("VIGIL-INIT: clock ")
        .next()
        .unwrap_or_else(|| panic!("no clock line:\n{}", run.log));
    let mut words = line.split("VIGIL-INIT: clock ").nth(1).unwrap().split(' ');
    let guest: i64 = words.next().and_then(|w| w.parse().ok()).unwrap();
    assert!(
        line.contains("rtc-pl031"),
        "rtc0 is not the PL031: {line}\n{}",
        run.log
    );
    // The run took at most its elapsed time since the guest read it.
    let slack = run.elapsed.as_secs() as i64 + 60;
    assert!(
        (host - guest).abs() <= slack,
        "guest clock {guest}, host {host} (allowed {slack} s apart)\n{}",
        run.log
    );
}
