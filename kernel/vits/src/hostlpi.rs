//! Host LPIs of passed-through devices, routed back to guest events.
//!
//! The hypervisor mirrors a guest's MAPTI of a real device onto the
//! physical ITS with a host LPI of its own; when that host LPI fires, its
//! handler must find the guest event it stands for, and raise it through
//! the guest's vITS only if it is still the mapping the LPI was raised for.
//! This module is that lookup, kept free of hardware so that its races
//! are tested on the host (shuttle, `tests/hostlpi.rs`).
//!
//! Each host LPI has a route word (valid, VM, DeviceID, EventID) and a
//! stamp word: the vGIC generation of the mapping (the vITS ITE's) and
//! the epoch at which it was armed. Invariants (DESIGN.md's words, "vITS
//! invariant 8" continued):
//!
//! * **H1, generation.** A host LPI is raised only into the mapping whose
//!   generation its route carried: [`Vits::translate_generation`] checks it
//!   under the vITS route lock, so a `DISCARD; MAPTI` of the same
//!   (DeviceID, EventID) between the lookup and the raise drops it.
//! * **H2, acknowledged before armed.** Every CPU publishes the epoch
//!   before it acknowledges an interrupt ([`HostRoutes::begin_ack`]), and
//!   arming waits until no acknowledgement that began in an older epoch is
//!   still under way ([`HostRoutes::arm`]). A host LPI acknowledged before
//!   its route was (re)armed (one taken before the guest's DISCARD, whose
//!   handler reads the route only after the new MAPTI) is dropped.
//! * **H3, reclaim.** A freed block of host LPIs is reused only once every
//!   CPU that was in an acknowledgement or handler when it was freed has
//!   left it ([`HostRoutes::reclaim`]); the epoch is published before the
//!   acknowledgement, so no handler can be past its IAR read unseen.
//!
//! Lock-free: the handler side takes no lock, so the mirror may wait for
//! acknowledgements while it holds the vITS route lock (an acknowledgement
//! window is a few instructions, with no lock inside).
//!
//! [`Vits::translate_generation`]: crate::Vits::translate_generation

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use vigil_vgic::sync::{yield_point, Mutex};

const VALID: u64 = 1 << 63;

/// A guest event a host LPI stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub vm: usize,
    pub device: u32,
    pub event: u32,
    /// The vGIC generation of the mapping (low 32 bits).
    pub generation: u32,
}

fn pack(vm: usize, device: u32, event: u32) -> u64 {
    VALID | ((vm as u64 & 0x7f) << 56) | ((u64::from(device) & 0xff_ffff) << 32) | u64::from(event)
}

/// Whether epoch `a` is after epoch `b` (32-bit, wrapping).
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// One CPU's acknowledgement state.
struct Ack {
    /// The epoch this CPU read before its current IAR read, until the read
    /// returned (0 outside).
    window: AtomicU64,
    /// The epoch this CPU read before its current IAR read, until its
    /// handler returned (0 outside).
    handling: AtomicU64,
}

/// The host-LPI routes of the whole machine.
pub struct HostRoutes {
    routes: Vec<AtomicU64>,
    stamps: Vec<AtomicU64>,
    epoch: AtomicU64,
    acks: Vec<Ack>,
    /// Blocks freed, with the epoch they were freed in.
    quarantine: Mutex<Vec<(u32, u64)>>,
    base: u32,
}

impl HostRoutes {
    /// Routes for host LPIs `base..base + count`, acknowledged by `cpus`
    /// CPUs.
    pub fn new(base: u32, count: usize, cpus: usize) -> Self {
        Self {
            routes: (0..count).map(|_| AtomicU64::new(0)).collect(),
            stamps: (0..count).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(1),
            acks: (0..cpus)
                .map(|_| Ack {
                    window: AtomicU64::new(0),
                    handling: AtomicU64::new(0),
                })
                .collect(),
            quarantine: Mutex::new(Vec::new()),
            base,
        }
    }

    fn index(&self, lpi: u32) -> Option<usize> {
        let i = lpi.checked_sub(self.base)? as usize;
        (i < self.routes.len()).then_some(i)
    }

    /// CPU `cpu` is about to read its IAR: publish the epoch (H2, H3).
    /// Returns it, for [`Self::lookup`].
    pub fn begin_ack(&self, cpu: usize) -> u64 {
        let a = &self.acks[cpu];
        loop {
            yield_point(false);
            let e = self.epoch.load(SeqCst);
            a.handling.store(e, SeqCst);
            a.window.store(e, SeqCst);
            yield_point(false);
            // An arm or free that read this CPU's slot before the stores
            // above bumped the epoch first: take the new one.
            if self.epoch.load(SeqCst) == e {
                return e;
            }
        }
    }

    /// The epoch CPU `cpu` published before its current acknowledgement
    /// (for [`Self::lookup`] in the handler).
    pub fn ack_epoch(&self, cpu: usize) -> u64 {
        self.acks[cpu].handling.load(SeqCst)
    }

    /// CPU `cpu`'s IAR read returned.
    pub fn end_window(&self, cpu: usize) {
        yield_point(false);
        self.acks[cpu].window.store(0, SeqCst);
    }

    /// CPU `cpu`'s handler returned.
    pub fn end_ack(&self, cpu: usize) {
        yield_point(false);
        let a = &self.acks[cpu];
        a.window.store(0, SeqCst);
        a.handling.store(0, SeqCst);
    }

    /// The guest event host LPI `lpi` stands for, if it is mapped and was
    /// armed no later than `ack_epoch` (what [`Self::begin_ack`] returned
    /// before the LPI was acknowledged).
    pub fn lookup(&self, lpi: u32, ack_epoch: u64) -> Option<Route> {
        let i = self.index(lpi)?;
        yield_point(false);
        let r = self.routes[i].load(SeqCst);
        if r & VALID == 0 {
            return None;
        }
        yield_point(false);
        let stamp = self.stamps[i].load(SeqCst);
        if after(stamp as u32, ack_epoch as u32) {
            // H2: acknowledged before this mapping was armed.
            return None;
        }
        Some(Route {
            vm: ((r >> 56) & 0x7f) as usize,
            device: ((r >> 32) & 0xff_ffff) as u32,
            event: r as u32,
            generation: (stamp >> 32) as u32,
        })
    }

    /// Route host LPI `lpi` to `route` (MAPTI). Returns once no CPU is
    /// still acknowledging an interrupt it began to in an older epoch:
    /// the caller maps the physical event only then (H2).
    pub fn arm(&self, lpi: u32, route: Route) {
        let Some(i) = self.index(lpi) else { return };
        yield_point(false);
        let armed = self.epoch.fetch_add(1, SeqCst) + 1;
        yield_point(false);
        self.stamps[i].store(
            (u64::from(route.generation) << 32) | (armed & 0xffff_ffff),
            SeqCst,
        );
        yield_point(false);
        self.routes[i].store(pack(route.vm, route.device, route.event), SeqCst);
        for a in &self.acks {
            loop {
                yield_point(false);
                let w = a.window.load(SeqCst);
                if w == 0 || w >= armed {
                    break;
                }
                yield_point(true);
                core::hint::spin_loop();
            }
        }
    }

    /// Forget host LPI `lpi`'s route (DISCARD, MAPD(V=0)).
    pub fn disarm(&self, lpi: u32) {
        if let Some(i) = self.index(lpi) {
            yield_point(false);
            self.routes[i].store(0, SeqCst);
        }
    }

    /// A block of host LPIs starting at `first`, every route disarmed, is
    /// no longer used: it may be reused once [`Self::reclaim`] says so.
    pub fn free_later(&self, first: u32) {
        yield_point(false);
        let epoch = self.epoch.fetch_add(1, SeqCst);
        self.quarantine.lock().push((first, epoch));
    }

    /// Give `free` every quarantined block no acknowledgement or handler
    /// can still be looking at (H3).
    pub fn reclaim(&self, mut free: impl FnMut(u32)) {
        let oldest = self
            .acks
            .iter()
            .map(|a| {
                yield_point(false);
                a.handling.load(SeqCst)
            })
            .filter(|&e| e != 0)
            .min()
            .unwrap_or(u64::MAX);
        let mut q = self.quarantine.lock();
        q.retain(|&(first, freed_at)| {
            if freed_at < oldest {
                free(first);
                false
            } else {
                true
            }
        });
        // Nothing held once nothing is quarantined (Vigil's exit checks
        // the heap is back where it was before any VM ran).
        if q.is_empty() {
            q.shrink_to_fit();
        }
    }

    /// Blocks waiting in quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantine.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Route = Route {
        vm: 3,
        device: 0x12,
        event: 5,
        generation: 9,
    };

    #[test]
    fn an_armed_route_is_found_by_later_acknowledgements_only() {
        let h = HostRoutes::new(8192, 16, 2);
        let before = h.begin_ack(0);
        h.end_window(0);
        h.end_ack(0);
        h.arm(8195, R);
        assert_eq!(h.lookup(8195, before), None, "acknowledged before arming");
        let e = h.begin_ack(1);
        h.end_window(1);
        assert_eq!(h.lookup(8195, e), Some(R));
        h.end_ack(1);
        h.disarm(8195);
        assert_eq!(h.lookup(8195, u64::MAX >> 1), None);
        assert_eq!(h.lookup(8192 + 16, e), None, "outside the table");
        assert_eq!(h.lookup(10, e), None);
    }

    #[test]
    fn a_block_is_reclaimed_after_every_handler_of_its_time_left() {
        let h = HostRoutes::new(8192, 16, 2);
        let _ = h.begin_ack(1);
        h.end_window(1);
        h.free_later(8192);
        let mut got = Vec::new();
        h.reclaim(|b| got.push(b));
        assert!(got.is_empty(), "CPU 1 is still in a handler from before");
        h.end_ack(1);
        h.reclaim(|b| got.push(b));
        assert_eq!(got, [8192]);
        assert_eq!(h.quarantined(), 0);
    }
}
