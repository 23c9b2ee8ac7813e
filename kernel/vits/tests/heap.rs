//! The heap a vITS at its mapping quota takes, with its vGIC's per-LPI
//! state, is within `vigil_vits::HEAP_AT_QUOTA`: the allowance per VM the
//! hypervisor adds to its heap, so that every VM can fill its quota at once
//! (before 10^5 mappings per VM, 300,000 MAPTIs over several VMs exhausted
//! a 64 MiB heap and panicked Vigil). Allocations are counted as the
//! hypervisor's buddy allocator serves them: a power-of-two block at least
//! as large as the size and the alignment.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use vigil_vgic::VgicConfig;
use vigil_vits::{Command, VitsConfig, HEAP_AT_QUOTA, MAX_MAPPINGS};

struct Buddy;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn block(l: Layout) -> usize {
    l.size().max(l.align()).max(8).next_power_of_two()
}

// SAFETY: every call is forwarded to the system allocator unchanged; only
// counters are kept besides.
unsafe impl GlobalAlloc for Buddy {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(block(l), Ordering::Relaxed) + block(l);
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        IN_USE.fetch_sub(block(l), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Buddy = Buddy;

/// The worst a guest can do within the quota: every mapping on a vINTID
/// of its own while there are any (2^17 - 8192 of them), the rest sharing
/// (one route entry each), in event order and in a scattered one.
#[test]
fn a_vits_at_its_quota_fits_its_heap_allowance() {
    for scattered in [false, true] {
        let mut vgic = VgicConfig::simple(4);
        vgic.lpi_id_bits = 17;
        let r = Rig::with_vgic(vgic, VitsConfig::default());
        let lpis = (1u32 << 17) - LPI0;
        let order = |k: u32| {
            if scattered {
                k.wrapping_mul(40503) % MAX_MAPPINGS
            } else {
                k
            }
        };
        let cmds: Vec<Command> = (0..MAX_MAPPINGS)
            .map(|k| {
                let k = order(k);
                Command::Mapti {
                    device: 1 + k / 65536,
                    event: k % 65536,
                    intid: LPI0 + k % lpis,
                    icid: (k % 4) as u16,
                }
            })
            .collect();
        // The commands are the guest's, not the hypervisor's heap; the
        // ITTs that MAPD allocates are the hypervisor's.
        let base = IN_USE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        r.map_two_full_devices();
        // The flat collection table at its largest this table allows
        // (one 64 KiB page: 8192 ICIDs).
        r.cmd(Command::Mapc {
            icid: 8191,
            rdbase: 0,
            valid: true,
        });
        for chunk in cmds.chunks(1024) {
            r.cmds(chunk);
        }
        assert_eq!(r.its.error_count(), 0);
        assert_eq!(r.vgic.lock().lpi_count(), lpis as usize);
        drop(cmds);
        let taken = PEAK.load(Ordering::Relaxed) - base;
        println!(
            "{} mappings ({lpis} LPIs), {}: {taken} bytes, {} per mapping; allowance {HEAP_AT_QUOTA}",
            MAX_MAPPINGS,
            if scattered { "scattered" } else { "in order" },
            taken / MAX_MAPPINGS as usize
        );
        assert!(
            taken <= HEAP_AT_QUOTA,
            "{taken} bytes at the quota, allowance {HEAP_AT_QUOTA}"
        );
    }
}
