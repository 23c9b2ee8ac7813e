//! Property test: random command sequences (valid and invalid) against a
//! small reference model of the ITS as IHI 0069 §5.3 describes it.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use vigil_vits::Command;

const NR_VCPUS: usize = 2;
const DEVICES: [u32; 5] = [0, 1, 2, 9000, 70000];
const INTIDS: [u32; 6] = [LPI0, LPI0 + 1, LPI0 + 2, LPI0 + 3, 100, 70000];
const ICIDS: [u16; 5] = [0, 1, 2, 3, 9000];

fn command() -> impl Strategy<Value = Command> {
    let dev = proptest::sample::select(&DEVICES[..]);
    let ev = 0..10u32;
    let icid = proptest::sample::select(&ICIDS[..]);
    let rd = 0..3u64;
    prop_oneof![
        3 => (dev.clone(), prop_oneof![0..4u8, Just(20)], any::<bool>(), any::<bool>()).prop_map(
            |(device, size, good, valid)| Command::Mapd {
                device,
                size,
                itt_addr: if good { ITT_BASE } else { 0x1000 },
                valid: valid || good,
            }
        ),
        1 => (icid.clone(), rd.clone(), prop::bool::weighted(0.8))
            .prop_map(|(icid, rdbase, valid)| Command::Mapc { icid, rdbase, valid }),
        4 => (dev.clone(), ev.clone(), proptest::sample::select(&INTIDS[..]), icid.clone())
            .prop_map(|(device, event, intid, icid)| Command::Mapti { device, event, intid, icid }),
        1 => (dev.clone(), ev.clone(), icid.clone()).prop_map(|(device, event, icid)| Command::Mapi { device, event, icid }),
        2 => (dev.clone(), ev.clone(), icid.clone()).prop_map(|(device, event, icid)| Command::Movi { device, event, icid }),
        2 => (dev.clone(), ev.clone()).prop_map(|(device, event)| Command::Discard { device, event }),
        1 => (dev.clone(), ev.clone()).prop_map(|(device, event)| Command::Inv { device, event }),
        1 => icid.clone().prop_map(|icid| Command::Invall { icid }),
        4 => (dev.clone(), ev.clone()).prop_map(|(device, event)| Command::Int { device, event }),
        2 => (dev, ev).prop_map(|(device, event)| Command::Clear { device, event }),
        1 => rd.clone().prop_map(|rdbase| Command::Sync { rdbase }),
        1 => (rd.clone(), rd).prop_map(|(rdbase1, rdbase2)| Command::Movall { rdbase1, rdbase2 }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lpi {
    refs: u32,
    pending: bool,
    target: Option<usize>,
}

/// EventID -> (vINTID, ICID).
type Itt = BTreeMap<u32, (u32, u16)>;

#[derive(Default)]
struct Model {
    /// DeviceID -> (EventID bits, ITT).
    devices: BTreeMap<u32, (u8, Itt)>,
    collections: BTreeMap<u16, usize>,
    lpis: BTreeMap<u32, Lpi>,
    errors: u64,
}

const TABLE_ENTRIES: u32 = 8192; // one 64 KiB page of 8-byte entries

impl Model {
    fn unref(&mut self, intid: u32) {
        let l = self.lpis.get_mut(&intid).unwrap();
        l.refs -= 1;
        if l.refs == 0 {
            self.lpis.remove(&intid);
        }
    }

    fn ite(&self, dev: u32, ev: u32) -> Option<(u32, u16)> {
        let (bits, evs) = self.devices.get(&dev)?;
        if ev >= 1 << bits {
            return None;
        }
        evs.get(&ev).copied()
    }

    /// Apply; false if the command is an error (and then nothing changed).
    fn apply(&mut self, c: &Command) -> bool {
        match *c {
            Command::Mapd {
                device,
                size,
                valid,
                itt_addr,
            } => {
                if device >= TABLE_ENTRIES || (valid && (size + 1 > 16 || itt_addr != ITT_BASE)) {
                    return false;
                }
                if let Some((_, evs)) = self.devices.remove(&device) {
                    for (intid, _) in evs.values() {
                        self.unref(*intid);
                    }
                }
                if valid {
                    self.devices.insert(device, (size + 1, BTreeMap::new()));
                }
            }
            Command::Mapc {
                icid,
                rdbase,
                valid,
            } => {
                if u32::from(icid) >= TABLE_ENTRIES {
                    return false;
                }
                if !valid {
                    self.collections.remove(&icid);
                    return true;
                }
                if rdbase as usize >= NR_VCPUS {
                    return false;
                }
                let old = self.collections.insert(icid, rdbase as usize);
                if old.is_some_and(|o| o != rdbase as usize) {
                    let ids: Vec<u32> = self
                        .devices
                        .values()
                        .flat_map(|(_, e)| e.values())
                        .filter(|(_, i)| *i == icid)
                        .map(|(v, _)| *v)
                        .collect();
                    for v in ids {
                        self.lpis.get_mut(&v).unwrap().target = Some(rdbase as usize);
                    }
                }
            }
            Command::Mapti {
                device,
                event,
                intid,
                icid,
            } => return self.mapti(device, event, intid, icid),
            Command::Mapi {
                device,
                event,
                icid,
            } => return self.mapti(device, event, event, icid),
            Command::Movi {
                device,
                event,
                icid,
            } => {
                if u32::from(icid) >= TABLE_ENTRIES {
                    return false;
                }
                let Some((intid, _)) = self.ite(device, event) else {
                    return false;
                };
                let Some(&v) = self.collections.get(&icid) else {
                    return false;
                };
                self.devices
                    .get_mut(&device)
                    .unwrap()
                    .1
                    .insert(event, (intid, icid));
                self.lpis.get_mut(&intid).unwrap().target = Some(v);
            }
            Command::Discard { device, event } => {
                let Some((intid, _)) = self.ite(device, event) else {
                    return false;
                };
                self.devices.get_mut(&device).unwrap().1.remove(&event);
                self.unref(intid);
            }
            Command::Inv { device, event } => return self.ite(device, event).is_some(),
            Command::Invall { icid } => {
                return u32::from(icid) < TABLE_ENTRIES && self.collections.contains_key(&icid);
            }
            Command::Int { device, event } | Command::Clear { device, event } => {
                let Some((intid, icid)) = self.ite(device, event) else {
                    return false;
                };
                let Some(&v) = self.collections.get(&icid) else {
                    return false;
                };
                let l = self.lpis.get_mut(&intid).unwrap();
                if matches!(c, Command::Int { .. }) {
                    l.pending = true;
                    l.target = Some(v);
                } else {
                    l.pending = false;
                }
            }
            Command::Sync { rdbase } => return (rdbase as usize) < NR_VCPUS,
            Command::Movall { rdbase1, rdbase2 } => {
                if rdbase1 as usize >= NR_VCPUS || rdbase2 as usize >= NR_VCPUS {
                    return false;
                }
                for l in self.lpis.values_mut() {
                    if l.target == Some(rdbase1 as usize) {
                        l.target = Some(rdbase2 as usize);
                    }
                }
            }
        }
        true
    }

    fn mapti(&mut self, device: u32, event: u32, intid: u32, icid: u16) -> bool {
        if u32::from(icid) >= TABLE_ENTRIES || !(LPI0..1 << 16).contains(&intid) {
            return false;
        }
        let target = self.collections.get(&icid).copied();
        let Some((bits, evs)) = self.devices.get_mut(&device) else {
            return false;
        };
        if event >= 1 << *bits || evs.contains_key(&event) {
            return false;
        }
        evs.insert(event, (intid, icid));
        let l = self.lpis.entry(intid).or_insert(Lpi {
            refs: 0,
            pending: false,
            target,
        });
        l.refs += 1;
        if target.is_some() {
            l.target = target;
        }
        true
    }
}

fn check(r: &Rig, m: &Model) {
    assert_eq!(r.its.error_count(), m.errors, "error count");
    for &d in &DEVICES {
        for e in 0..10 {
            let want = m.devices.get(&d).and_then(|(_, evs)| evs.get(&e).copied());
            assert_eq!(r.its.lookup(d, e), want, "route of ({d}, {e})");
        }
    }
    for &i in &ICIDS {
        assert_eq!(
            r.its.collection(i),
            m.collections.get(&i).copied(),
            "collection {i}"
        );
    }
    let st = r.vgic.lock();
    assert_eq!(st.lpi_count(), m.lpis.len(), "live per-LPI state");
    for (&intid, l) in &m.lpis {
        assert_eq!(st.lpi_pending(intid), l.pending, "pending {intid}");
        assert_eq!(st.lpi_target(intid), l.target, "target {intid}");
    }
    assert_eq!(st.anomalies(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn commands_match_reference_model(cmds in proptest::collection::vec(command(), 1..40)) {
        let r = Rig::new(NR_VCPUS);
        let mut m = Model::default();
        for v in 0..NR_VCPUS {
            m.collections.insert(v as u16, v);
        }
        for c in &cmds {
            if !m.apply(c) {
                m.errors += 1;
            }
            r.cmd(*c);
            check(&r, &m);
        }
        // Deliver: every pending LPI reaches its target exactly once.
        for v in 0..NR_VCPUS {
            let mut got = r.drain(v);
            got.sort();
            let want: Vec<u32> = m
                .lpis
                .iter()
                .filter(|(_, l)| l.pending && l.target == Some(v))
                .map(|(&i, _)| i)
                .collect();
            prop_assert_eq!(got, want, "vCPU {}", v);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    /// The same commands in one CWRITER write, run in slices of 1 to 4
    /// units (issue 14, item 3) with `resume` until done: the same end
    /// state as the reference model, whatever the slice boundaries.
    #[test]
    fn commands_in_slices_match_reference_model(
        cmds in proptest::collection::vec(command(), 1..40),
        slice in 1u32..5,
    ) {
        let r = Rig::with(NR_VCPUS, vigil_vits::VitsConfig {
            slice: Some(slice),
            ..vigil_vits::VitsConfig::default()
        });
        while r.its.has_unfinished_commands() {
            r.its.resume(&*r.mem);
        }
        let mut m = Model::default();
        for v in 0..NR_VCPUS {
            m.collections.insert(v as u16, v);
        }
        for c in &cmds {
            if !m.apply(c) {
                m.errors += 1;
            }
        }
        r.cmds(&cmds);
        let mut calls = 0;
        while r.its.has_unfinished_commands() {
            r.its.resume(&*r.mem);
            calls += 1;
            prop_assert!(calls < 100_000, "the queue never finishes");
        }
        check(&r, &m);
    }
}

// ---- fuzz: random raw commands and register writes never break the VM ----

#[derive(Clone, Debug)]
enum Poke {
    Raw([u64; 4]),
    ItsWrite(u64, u8, u64),
    Translate(u32, u32),
    Run(usize, u8),
}

fn poke() -> impl Strategy<Value = Poke> {
    let op = prop_oneof![(0u64..0x10), Just(0x29u64), any::<u8>().prop_map(u64::from)];
    let small = prop_oneof![0u64..4, Just(LPI0 as u64), any::<u64>()];
    prop_oneof![
        6 => (op, small.clone(), small.clone(), any::<u64>())
            .prop_map(|(op, a, b, c)| Poke::Raw([op | (a << 32), b | ((LPI0 as u64) << 32), c & 0x8000_ffff_ffff_ffff, c])),
        2 => (
            prop_oneof![Just(0u64), Just(0x80), Just(0x84), Just(0x88), Just(0x100), Just(0x108), Just(0x10040), 0u64..0x20000],
            prop_oneof![Just(4u8), Just(8u8), 1u8..9],
            prop_oneof![Just(1u64), any::<u64>(), 0u64..0x1_0000],
        ).prop_map(|(o, l, v)| Poke::ItsWrite(o, l, v)),
        2 => (0u32..4, 0u32..12).prop_map(|(d, e)| Poke::Translate(d, e)),
        2 => (0usize..NR_VCPUS, 0u8..4).prop_map(|(v, n)| Poke::Run(v, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]
    /// A hostile guest's random commands, CWRITER/CBASER/BASER values and
    /// TRANSLATER writes never panic, never corrupt the vGIC (anomalies),
    /// and never put the same vINTID in two LRs (SimCpu checks each flush).
    #[test]
    fn hostile_guest_never_breaks_the_vm(pokes in proptest::collection::vec(poke(), 1..120)) {
        let r = Rig::new(NR_VCPUS);
        r.mapd(1, 3);
        r.mapti(1, 0, LPI0, 0);
        let mut cpus: Vec<_> = (0..NR_VCPUS).map(|v| vigil_vgic::sim::SimCpu::new(v, 4)).collect();
        for p in pokes {
            match p {
                Poke::Raw(dw) => r.raw(dw),
                Poke::ItsWrite(o, l, v) => {
                    r.its.mmio_write(o, l, v, &*r.mem);
                    let _ = r.its.mmio_read(o, l);
                }
                Poke::Translate(d, e) => {
                    let _ = r.its.translate(d, e);
                }
                Poke::Run(v, n) => {
                    let c = &mut cpus[v];
                    c.enter(&r.vgic);
                    for _ in 0..n {
                        if let Some(i) = c.ack() {
                            c.eoi(i);
                        }
                    }
                    c.exit(&r.vgic);
                }
            }
        }
        for c in cpus.iter_mut() {
            while let Some(&(i, _)) = c.active.last() {
                c.enter(&r.vgic);
                c.eoi(i);
                c.exit(&r.vgic);
            }
            c.drain(&r.vgic, 64);
        }
        let st = r.vgic.lock();
        prop_assert_eq!(st.anomalies(), 0);
        for v in 0..NR_VCPUS {
            prop_assert_eq!(st.list_len(v), 0);
        }
    }
}

/// The acceptance fuzz scenario at host level: a hostile VM issues 100,000
/// random commands (random opcodes and fields, out-of-range IDs, CWRITER
/// values past the queue) while its LPIs are triggered; a second,
/// well-behaved VM's LPIs all arrive, exactly once each.
#[test]
fn hundred_thousand_random_commands_next_to_a_good_vm() {
    let bad = Rig::new(NR_VCPUS);
    let good = Rig::new(NR_VCPUS);
    good.mapd(7, 3);
    for e in 0..8 {
        good.mapti(7, e, LPI0 + e, (e % 2) as u16);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bad_cpu = vigil_vgic::sim::SimCpu::new(0, 4);
    for i in 0..100_000u32 {
        let a = rnd();
        let op = match a % 4 {
            0 => a >> 56,         // any byte
            _ => (a >> 56) & 0xf, // mostly implemented commands
        };
        let dev = if a & 0x100 != 0 { (a >> 9) & 3 } else { a >> 9 };
        let b = rnd();
        let c = rnd();
        bad.raw([op | (dev << 32), b, c, rnd()]);
        if i % 97 == 0 {
            // CWRITER past the queue, BASER/CBASER pokes, a TRANSLATER write.
            bad.its.mmio_write(0x88, 8, rnd(), &*bad.mem);
            bad.its.mmio_write(0x10040, 4, rnd(), &*bad.mem);
            let _ = bad.its.translate((rnd() % 4) as u32, (rnd() % 16) as u32);
        }
        if i % 101 == 0 {
            bad_cpu.enter(&bad.vgic);
            while let Some(id) = bad_cpu.ack() {
                bad_cpu.eoi(id);
            }
            bad_cpu.exit(&bad.vgic);
        }
        if i % 1000 == 0 {
            let e = (i / 1000) % 8;
            good.int(7, e);
            let v = (e % 2) as usize;
            assert_eq!(good.drain(v), vec![LPI0 + e], "good VM LPI {e}");
        }
    }
    assert!(bad.its.error_count() > 10_000);
    assert!(bad.its.command_count() > 50_000);
    assert_eq!(good.its.error_count(), 0);
    assert_eq!(bad.vgic.lock().anomalies(), 0);
}
