//! PSCI 1.1 for guests (Arm DEN 0022): the calls, their results, and the
//! power state of each vCPU.
//!
//! CPU_ON races are settled by one compare-and-swap on the target's state
//! (Off -> OnPending): of racing callers exactly one gets SUCCESS; the
//! others get ALREADY_ON (DESIGN.md; DEN 0022 §5.6 also allows ON_PENDING,
//! Vigil answers ALREADY_ON so that "exactly one SUCCESS" is all a caller
//! needs to reason about).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Function IDs (DEN 0022 §5.1, table 5.1).
pub mod fid {
    pub const VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xc400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const FEATURES: u32 = 0x8400_000a;
}

/// Return codes (DEN 0022 §5.2.2).
pub mod ret {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const DENIED: i64 = -3;
    pub const ALREADY_ON: i64 = -4;
    pub const ON_PENDING: i64 = -5;
    pub const INTERNAL_FAILURE: i64 = -6;
    pub const NOT_PRESENT: i64 = -7;
    pub const DISABLED: i64 = -8;
    pub const INVALID_ADDRESS: i64 = -9;
}

/// AFFINITY_INFO results (DEN 0022 §5.7.2).
pub mod affinity {
    pub const ON: i64 = 0;
    pub const OFF: i64 = 1;
    pub const ON_PENDING: i64 = 2;
}

/// Vigil's own hypercalls (SMCCC vendor-specific hypervisor service,
/// owning entity 6: function IDs 0xC600_0000..).
pub mod hypercall {
    /// x1 = the status QEMU exits with when this VM powers off.
    pub const EXIT_STATUS: u32 = 0xc600_0001;
    /// Does nothing, returns 0: the cheapest round trip.
    pub const NULL: u32 = 0xc600_0002;
    /// Returns 0 after letting another vCPU of this physical CPU run, if
    /// one is runnable (for measuring a vCPU switch).
    pub const YIELD: u32 = 0xc600_0003;
    /// Returns how many host LPIs are free (after reclaiming those no
    /// handler can see any more): lets a passthrough test prove that
    /// unmapping gave every one back.
    pub const HOST_LPIS_FREE: u32 = 0xc600_0004;
    /// Returns the calling VM's vGIC/vITS anomaly count (0 unless the
    /// emulation has a bug): lets a scenario check itself.
    pub const ANOMALIES: u32 = 0xc600_0005;
    /// Returns the calling vCPU's exits so far, this call's own included
    /// (x0), and of them those for a physical interrupt (x1): lets a
    /// benchmark count the exits an operation costs.
    pub const EXITS: u32 = 0xc600_0006;
}

/// SMCCC (DEN 0028) calls Vigil answers besides PSCI, and the range PSCI
/// owns.
pub mod smccc {
    pub const VERSION: u32 = 0x8000_0000;
    pub const ARCH_FEATURES: u32 = 0x8000_0001;
    /// NOT_SUPPORTED as an SMCCC return value.
    pub const NOT_SUPPORTED: u64 = u64::MAX;
    /// PSCI owns function numbers 0x00-0x1f of the standard secure
    /// service, in both calling conventions (SMCCC table 6-4).
    pub fn is_psci(fid: u32) -> bool {
        fid & 0xbfff_ffe0 == super::fid::VERSION
    }
}

/// PSCI 1.1.
pub const VERSION: i64 = 0x0001_0001;

/// MIGRATE_INFO_TYPE: no Trusted OS that needs migrating (DEN 0022
/// §5.9.1, value 2).
const TOS_NOT_PRESENT: i64 = 2;

/// A vCPU's power state, as AFFINITY_INFO reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PowerState {
    On = 0,
    Off = 1,
    OnPending = 2,
}

/// Internal state between winning a CPU_ON race and publishing the entry
/// point; reported as ON_PENDING.
const CLAIMED: u8 = 3;

impl PowerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::On,
            2 | CLAIMED => Self::OnPending,
            _ => Self::Off,
        }
    }
}

/// The power state of one vCPU and where CPU_ON asked it to start.
pub struct VcpuPower {
    state: AtomicU8,
    entry: AtomicU64,
    context: AtomicU64,
}

impl VcpuPower {
    pub const fn new(state: PowerState) -> Self {
        Self {
            state: AtomicU8::new(state as u8),
            entry: AtomicU64::new(0),
            context: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> PowerState {
        PowerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// CPU_ON: claim the vCPU if it is off. Exactly one of any number of
    /// concurrent callers succeeds.
    pub fn request_on(&self, entry: u64, context: u64) -> Result<(), i64> {
        // Claim, publish the entry point, then mark it pending: the
        // target reads entry/context only once it sees OnPending.
        self.state
            .compare_exchange(
                PowerState::Off as u8,
                CLAIMED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| ret::ALREADY_ON)?;
        self.entry.store(entry, Ordering::Relaxed);
        self.context.store(context, Ordering::Relaxed);
        self.state
            .store(PowerState::OnPending as u8, Ordering::Release);
        Ok(())
    }

    /// On the target's physical CPU: if a CPU_ON is pending, take its
    /// entry point and context id and mark the vCPU on.
    pub fn take_boot(&self) -> Option<(u64, u64)> {
        if self.state.load(Ordering::Acquire) != PowerState::OnPending as u8 {
            return None;
        }
        let context = self.context.load(Ordering::Relaxed);
        let entry = self.entry.load(Ordering::Relaxed);
        // One CAS: a `set_off` (a reset or stop) between the load and
        // here wins, and the vCPU stays off.
        self.state
            .compare_exchange(
                PowerState::OnPending as u8,
                PowerState::On as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()?;
        Some((entry, context))
    }

    /// CPU_OFF, or the VM stopping.
    pub fn set_off(&self) {
        self.state.store(PowerState::Off as u8, Ordering::Release);
    }

    /// The boot vCPU starts on.
    pub fn set_on(&self) {
        self.state.store(PowerState::On as u8, Ordering::Release);
    }
}

/// What PSCI needs to know about the calling VM.
pub trait PsciVm {
    /// The vCPU whose MPIDR affinity is `mpidr`.
    fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize>;
    fn power(&self, vcpu: usize) -> &VcpuPower;
    /// Whether `ipa` is guest RAM (a valid entry point).
    fn is_ram(&self, ipa: u64) -> bool;
    /// Whether a vCPU may be powered on now: false while the VM is being
    /// reset or stopped, when CPU_ON is DENIED.
    fn may_power_on(&self) -> bool {
        true
    }
}

/// What the hypervisor must do after a PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in x0 and continue.
    Return(i64),
    /// CPU_ON succeeded: return SUCCESS and wake vCPU `target`.
    Started {
        target: usize,
    },
    /// The caller is off: stop running it.
    CpuOff,
    SystemOff,
    SystemReset,
}

/// Affinity fields of an MPIDR value (Aff3, Aff2..Aff0).
fn affinity(v: u64) -> u64 {
    v & 0xff_00ff_ffff
}

/// Handle PSCI function `fid` with arguments `a1..a3` from vCPU `caller`.
/// Returns `None` when `fid` is not a PSCI function at all (the caller
/// decides what other service it may be).
pub fn call(
    vm: &dyn PsciVm,
    caller: usize,
    fid: u32,
    a1: u64,
    a2: u64,
    a3: u64,
) -> Option<Outcome> {
    // SMC32/HVC32 calls take 32-bit arguments (SMCCC §2.6).
    let is32 = fid & 0x4000_0000 == 0;
    let arg = |v: u64| if is32 { v & 0xffff_ffff } else { v };
    let (a1, a2, a3) = (arg(a1), arg(a2), arg(a3));
    let _ = caller;
    Some(match fid {
        fid::VERSION => Outcome::Return(VERSION),
        fid::CPU_ON_32 | fid::CPU_ON_64 => {
            let Some(target) = vm.vcpu_by_mpidr(affinity(a1)) else {
                return Some(Outcome::Return(ret::INVALID_PARAMETERS));
            };
            if !vm.is_ram(a2) {
                return Some(Outcome::Return(ret::INVALID_ADDRESS));
            }
            // The VM is going through SYSTEM_RESET (or stopping): nothing
            // may start in it. The run loop refuses to enter a vCPU of
            // such a VM anyway, so a CPU_ON that passed this check just
            // before the reset began starts nothing either.
            if !vm.may_power_on() {
                return Some(Outcome::Return(ret::DENIED));
            }
            match vm.power(target).request_on(a2, a3) {
                Ok(()) => Outcome::Started { target },
                Err(e) => Outcome::Return(e),
            }
        }
        fid::CPU_OFF => Outcome::CpuOff,
        fid::AFFINITY_INFO_32 | fid::AFFINITY_INFO_64 => {
            // Only affinity level 0 (single vCPUs) is described.
            if a2 != 0 {
                return Some(Outcome::Return(ret::INVALID_PARAMETERS));
            }
            match vm.vcpu_by_mpidr(affinity(a1)) {
                Some(v) => Outcome::Return(vm.power(v).state() as i64),
                None => Outcome::Return(ret::INVALID_PARAMETERS),
            }
        }
        fid::MIGRATE_INFO_TYPE => Outcome::Return(TOS_NOT_PRESENT),
        fid::SYSTEM_OFF => Outcome::SystemOff,
        fid::SYSTEM_RESET => Outcome::SystemReset,
        fid::FEATURES => Outcome::Return(match a1 as u32 {
            fid::VERSION
            | fid::CPU_OFF
            | fid::CPU_ON_32
            | fid::CPU_ON_64
            | fid::AFFINITY_INFO_32
            | fid::AFFINITY_INFO_64
            | fid::MIGRATE_INFO_TYPE
            | fid::SYSTEM_OFF
            | fid::SYSTEM_RESET
            | fid::FEATURES => ret::SUCCESS,
            _ => ret::NOT_SUPPORTED,
        }),
        // The PSCI range (SMCCC "standard secure service", function
        // numbers 0x00-0x1f) that Vigil does not implement.
        f if f & 0xbfff_ffe0 == 0x8400_0000 => Outcome::Return(ret::NOT_SUPPORTED),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::vec::Vec;

    struct Vm {
        power: Vec<VcpuPower>,
        resetting: bool,
    }

    impl Vm {
        fn new(n: usize) -> Self {
            let mut power = Vec::new();
            power.push(VcpuPower::new(PowerState::On));
            for _ in 1..n {
                power.push(VcpuPower::new(PowerState::Off));
            }
            Self {
                power,
                resetting: false,
            }
        }
    }

    impl PsciVm for Vm {
        fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
            crate::layout::vcpu_index(mpidr, self.power.len())
        }
        fn power(&self, vcpu: usize) -> &VcpuPower {
            &self.power[vcpu]
        }
        fn is_ram(&self, ipa: u64) -> bool {
            (0x4000_0000..0x8000_0000).contains(&ipa)
        }
        fn may_power_on(&self) -> bool {
            !self.resetting
        }
    }

    const ENTRY: u64 = 0x4008_0000;

    #[test]
    fn cpu_on_is_denied_while_the_vm_resets() {
        let mut vm = Vm::new(2);
        vm.resetting = true;
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 1, ENTRY, 0),
            Some(Outcome::Return(ret::DENIED))
        );
        assert_eq!(vm.power[1].state(), PowerState::Off);
        vm.resetting = false;
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 1, ENTRY, 0),
            Some(Outcome::Started { target: 1 })
        );
    }

    #[test]
    fn version_features_and_unknown() {
        let vm = Vm::new(2);
        assert_eq!(
            call(&vm, 0, fid::VERSION, 0, 0, 0),
            Some(Outcome::Return(0x10001))
        );
        for f in [
            fid::CPU_ON_64,
            fid::CPU_OFF,
            fid::SYSTEM_OFF,
            fid::AFFINITY_INFO_64,
        ] {
            assert_eq!(
                call(&vm, 0, fid::FEATURES, f as u64, 0, 0),
                Some(Outcome::Return(ret::SUCCESS))
            );
        }
        assert_eq!(
            call(&vm, 0, fid::FEATURES, fid::CPU_SUSPEND_64 as u64, 0, 0),
            Some(Outcome::Return(ret::NOT_SUPPORTED))
        );
        // CPU_SUSPEND and other PSCI numbers: NOT_SUPPORTED.
        assert_eq!(
            call(&vm, 0, fid::CPU_SUSPEND_32, 0, 0, 0),
            Some(Outcome::Return(ret::NOT_SUPPORTED))
        );
        assert_eq!(
            call(&vm, 0, 0xc400_0011, 0, 0, 0),
            Some(Outcome::Return(ret::NOT_SUPPORTED))
        );
        // Not PSCI at all: for the caller to route.
        assert_eq!(call(&vm, 0, 0xc600_0001, 0, 0, 0), None);
        assert_eq!(call(&vm, 0, 0x8000_0000, 0, 0, 0), None);
    }

    #[test]
    fn cpu_on_then_affinity_info_then_off() {
        let vm = Vm::new(4);
        assert_eq!(
            call(&vm, 0, fid::AFFINITY_INFO_64, 2, 0, 0),
            Some(Outcome::Return(PowerState::Off as i64))
        );
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 2, ENTRY, 0x55),
            Some(Outcome::Started { target: 2 })
        );
        assert_eq!(
            call(&vm, 0, fid::AFFINITY_INFO_64, 2, 0, 0),
            Some(Outcome::Return(PowerState::OnPending as i64))
        );
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 2, ENTRY, 0),
            Some(Outcome::Return(ret::ALREADY_ON))
        );
        assert_eq!(vm.power(2).take_boot(), Some((ENTRY, 0x55)));
        assert_eq!(vm.power(2).take_boot(), None, "taken once");
        assert_eq!(
            call(&vm, 0, fid::AFFINITY_INFO_64, 2, 0, 0),
            Some(Outcome::Return(PowerState::On as i64))
        );
        assert_eq!(call(&vm, 2, fid::CPU_OFF, 0, 0, 0), Some(Outcome::CpuOff));
        vm.power(2).set_off();
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 2, ENTRY, 7),
            Some(Outcome::Started { target: 2 }),
            "an off vCPU can be started again"
        );
    }

    #[test]
    fn cpu_on_bad_arguments() {
        let vm = Vm::new(2);
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 9, ENTRY, 0),
            Some(Outcome::Return(ret::INVALID_PARAMETERS))
        );
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 1, 0x1000, 0),
            Some(Outcome::Return(ret::INVALID_ADDRESS))
        );
        assert_eq!(vm.power(1).state(), PowerState::Off, "no side effect");
        assert_eq!(
            call(&vm, 0, fid::CPU_ON_64, 0, ENTRY, 0),
            Some(Outcome::Return(ret::ALREADY_ON)),
            "the caller itself is on"
        );
        assert_eq!(
            call(&vm, 0, fid::AFFINITY_INFO_64, 1, 1, 0),
            Some(Outcome::Return(ret::INVALID_PARAMETERS))
        );
    }

    /// 64 vCPUs in clusters of 16: CPU_ON and AFFINITY_INFO name vCPU 16
    /// by MPIDR 0x100 and vCPU 63 by 0x30f; the flat affinities 0x10 and
    /// 0x3f name nobody (DEN 0022 §5.6, CPU_ON: INVALID_PARAMETERS).
    #[test]
    fn cpu_on_by_mpidr_across_clusters() {
        let vm = Vm::new(64);
        for (mpidr, v) in [(0x100, 16), (0x30f, 63), (0x201, 33)] {
            assert_eq!(
                call(&vm, 0, fid::CPU_ON_64, mpidr, ENTRY, v as u64),
                Some(Outcome::Started { target: v })
            );
            assert_eq!(
                call(&vm, 0, fid::AFFINITY_INFO_64, mpidr, 0, 0),
                Some(Outcome::Return(PowerState::OnPending as i64))
            );
        }
        for bad in [0x10, 0x3f, 0x400, 0x1_0000] {
            assert_eq!(
                call(&vm, 0, fid::CPU_ON_64, bad, ENTRY, 0),
                Some(Outcome::Return(ret::INVALID_PARAMETERS)),
                "{bad:#x}"
            );
            assert_eq!(
                call(&vm, 0, fid::AFFINITY_INFO_64, bad, 0, 0),
                Some(Outcome::Return(ret::INVALID_PARAMETERS)),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn smc32_arguments_are_truncated() {
        let vm = Vm::new(2);
        // Upper halves are ignored for 32-bit calls.
        assert_eq!(
            call(
                &vm,
                0,
                fid::CPU_ON_32,
                0xffff_ffff_0000_0001,
                0xdead_0000_4008_0000,
                0
            ),
            Some(Outcome::Started { target: 1 })
        );
        assert_eq!(vm.power(1).take_boot(), Some((ENTRY, 0)));
    }

    #[test]
    fn system_calls() {
        let vm = Vm::new(1);
        assert_eq!(
            call(&vm, 0, fid::SYSTEM_OFF, 0, 0, 0),
            Some(Outcome::SystemOff)
        );
        assert_eq!(
            call(&vm, 0, fid::SYSTEM_RESET, 0, 0, 0),
            Some(Outcome::SystemReset)
        );
        assert_eq!(
            call(&vm, 0, fid::MIGRATE_INFO_TYPE, 0, 0, 0),
            Some(Outcome::Return(2))
        );
    }

    /// Three callers race CPU_ON for one target, many times: exactly one
    /// SUCCESS each round, the others ALREADY_ON.
    #[test]
    fn racing_cpu_on_succeeds_exactly_once() {
        for round in 0..200 {
            let vm = Arc::new(Vm::new(4));
            let barrier = Arc::new(Barrier::new(3));
            let handles: Vec<_> = (0..3)
                .map(|caller| {
                    let (vm, barrier) = (vm.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        call(
                            &*vm,
                            caller,
                            fid::CPU_ON_64,
                            3,
                            ENTRY + caller as u64 * 4,
                            caller as u64,
                        )
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let wins = results
                .iter()
                .filter(|r| **r == Some(Outcome::Started { target: 3 }))
                .count();
            let already = results
                .iter()
                .filter(|r| **r == Some(Outcome::Return(ret::ALREADY_ON)))
                .count();
            assert_eq!((wins, already), (1, 2), "round {round}: {results:?}");
            // The winner's entry and context arrive together.
            let (entry, ctx) = vm.power(3).take_boot().unwrap();
            assert_eq!(entry, ENTRY + ctx * 4);
        }
    }
}
