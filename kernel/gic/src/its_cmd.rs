//! ITS commands (IHI 0069 §5.3): 32-byte entries of four little-endian
//! doublewords, built here bit-exactly.
//!
//! Field positions common to most commands (§5.3.1):
//! - DW0[7:0] command number, DW0[63:32] DeviceID;
//! - DW1[31:0] EventID, DW1[63:32] pINTID (MAPTI), DW1[4:0] Size (MAPD);
//! - DW2[15:0] ICID, DW2[51:16] RDbase (MAPC, SYNC, MOVALL),
//!   DW2[51:8] ITT_addr (MAPD), DW2[63] Valid (MAPC, MAPD);
//! - DW3[51:16] RDbase2 (MOVALL).
//!
//! GICv4.0's virtual commands (§5.3.20-§5.3.29) put the vPEID at
//! DW1[47:32]; VMAPTI's vINTID is DW2[31:0] and its doorbell DW2[63:32]
//! (1023: none); VMAPP's VPT_addr is DW3[51:16], VPT_size DW3[4:0];
//! VMOVP's SequenceNumber is DW0[47:32], its ITSList DW1[15:0].

/// Command numbers (IHI 0069 table 5-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Movi = 0x01,
    Int = 0x03,
    Clear = 0x04,
    Sync = 0x05,
    Mapd = 0x08,
    Mapc = 0x09,
    Mapti = 0x0a,
    Mapi = 0x0b,
    Inv = 0x0c,
    Invall = 0x0d,
    Movall = 0x0e,
    Discard = 0x0f,
    Vmovi = 0x21,
    Vmovp = 0x22,
    Vsync = 0x25,
    Vmapp = 0x29,
    Vmapti = 0x2a,
    Vmapi = 0x2b,
    Vinvall = 0x2d,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Movi,
            0x03 => Self::Int,
            0x04 => Self::Clear,
            0x05 => Self::Sync,
            0x08 => Self::Mapd,
            0x09 => Self::Mapc,
            0x0a => Self::Mapti,
            0x0b => Self::Mapi,
            0x0c => Self::Inv,
            0x0d => Self::Invall,
            0x0e => Self::Movall,
            0x0f => Self::Discard,
            0x21 => Self::Vmovi,
            0x22 => Self::Vmovp,
            0x25 => Self::Vsync,
            0x29 => Self::Vmapp,
            0x2a => Self::Vmapti,
            0x2b => Self::Vmapi,
            0x2d => Self::Vinvall,
            _ => return None,
        })
    }
}

/// A redistributor as named in ITS commands: its processor number when
/// GITS_TYPER.PTA == 0, or its physical address >> 16 when PTA == 1
/// (IHI 0069 §5.3.1, "RDbase").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdBase(pub u64);

impl RdBase {
    /// Target a redistributor, given how the ITS wants it addressed.
    pub fn new(pta: bool, processor_number: u64, gicr_phys: u64) -> Self {
        if pta {
            Self(gicr_phys >> 16)
        } else {
            Self(processor_number)
        }
    }
}

/// One encoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItsCommand(pub [u64; 4]);

const RDBASE_MASK: u64 = (1 << 36) - 1; // 36 bits at [51:16]
/// A doorbell field that names no doorbell (IHI 0069 §5.3.22).
pub const NO_DOORBELL: u32 = 1023;
const ITT_ADDR_MASK: u64 = ((1 << 52) - 1) & !0xff; // bits [51:8]

impl ItsCommand {
    fn new(op: Opcode) -> Self {
        Self([op as u64, 0, 0, 0])
    }

    fn device(mut self, device_id: u32) -> Self {
        self.0[0] |= (device_id as u64) << 32;
        self
    }

    fn event(mut self, event_id: u32) -> Self {
        self.0[1] |= event_id as u64;
        self
    }

    fn icid(mut self, icid: u16) -> Self {
        self.0[2] |= icid as u64;
        self
    }

    fn rdbase(mut self, rd: RdBase) -> Self {
        self.0[2] |= (rd.0 & RDBASE_MASK) << 16;
        self
    }

    /// MAPD: map `device_id` to the ITT at `itt_addr` (256-byte aligned)
    /// sized for `event_bits` EventID bits; or unmap it when `valid` is
    /// false (IHI 0069 §5.3.10).
    pub fn mapd(device_id: u32, itt_addr: u64, event_bits: u8, valid: bool) -> Self {
        let mut c = Self::new(Opcode::Mapd).device(device_id);
        c.0[1] |= (event_bits.saturating_sub(1) & 0x1f) as u64;
        c.0[2] |= (itt_addr & ITT_ADDR_MASK) | ((valid as u64) << 63);
        c
    }

    /// MAPC: map collection `icid` to a redistributor (§5.3.9).
    pub fn mapc(icid: u16, rd: RdBase, valid: bool) -> Self {
        let mut c = Self::new(Opcode::Mapc).icid(icid).rdbase(rd);
        c.0[2] |= (valid as u64) << 63;
        c
    }

    /// MAPTI: map (device, event) to physical LPI `pintid` in collection
    /// `icid` (§5.3.12).
    pub fn mapti(device_id: u32, event_id: u32, pintid: u32, icid: u16) -> Self {
        let mut c = Self::new(Opcode::Mapti)
            .device(device_id)
            .event(event_id)
            .icid(icid);
        c.0[1] |= (pintid as u64) << 32;
        c
    }

    /// MAPI: MAPTI with pINTID == EventID (§5.3.11).
    pub fn mapi(device_id: u32, event_id: u32, icid: u16) -> Self {
        Self::new(Opcode::Mapi)
            .device(device_id)
            .event(event_id)
            .icid(icid)
    }

    /// MOVI: move (device, event) to collection `icid` (§5.3.15).
    pub fn movi(device_id: u32, event_id: u32, icid: u16) -> Self {
        Self::new(Opcode::Movi)
            .device(device_id)
            .event(event_id)
            .icid(icid)
    }

    /// DISCARD: remove the mapping of (device, event) and clear its pending
    /// state (§5.3.4).
    pub fn discard(device_id: u32, event_id: u32) -> Self {
        Self::new(Opcode::Discard).device(device_id).event(event_id)
    }

    /// INV: reload the LPI configuration of (device, event) (§5.3.7).
    pub fn inv(device_id: u32, event_id: u32) -> Self {
        Self::new(Opcode::Inv).device(device_id).event(event_id)
    }

    /// INVALL: reload the configuration of every LPI of a collection
    /// (§5.3.8).
    pub fn invall(icid: u16) -> Self {
        Self::new(Opcode::Invall).icid(icid)
    }

    /// INT: make (device, event) pending, as a device write would (§5.3.6).
    pub fn int(device_id: u32, event_id: u32) -> Self {
        Self::new(Opcode::Int).device(device_id).event(event_id)
    }

    /// CLEAR: clear the pending state of (device, event) (§5.3.3).
    pub fn clear(device_id: u32, event_id: u32) -> Self {
        Self::new(Opcode::Clear).device(device_id).event(event_id)
    }

    /// SYNC: complete all earlier effects on redistributor `rd` (§5.3.19).
    pub fn sync(rd: RdBase) -> Self {
        Self::new(Opcode::Sync).rdbase(rd)
    }

    /// MOVALL: move all pending LPIs from one redistributor to another
    /// (§5.3.14).
    pub fn movall(from: RdBase, to: RdBase) -> Self {
        let mut c = Self::new(Opcode::Movall).rdbase(from);
        c.0[3] |= (to.0 & RDBASE_MASK) << 16;
        c
    }

    fn vpe(mut self, vpe_id: u16) -> Self {
        self.0[1] |= (vpe_id as u64) << 32;
        self
    }

    /// VMAPP (GICv4.0 form): map vPE `vpe_id` to redistributor `rd`, with
    /// its virtual pending table at `vpt_addr` (64 KiB aligned) for
    /// vINTIDs below 2^`id_bits`; or unmap it (§5.3.24).
    pub fn vmapp(vpe_id: u16, rd: RdBase, vpt_addr: u64, id_bits: u8, valid: bool) -> Self {
        let mut c = Self::new(Opcode::Vmapp).vpe(vpe_id).rdbase(rd);
        c.0[2] |= (valid as u64) << 63;
        c.0[3] = (vpt_addr & (RDBASE_MASK << 16)) | (id_bits.saturating_sub(1) & 0x1f) as u64;
        c
    }

    /// VMAPTI: map (device, event) to vLPI `vintid` of vPE `vpe_id`,
    /// ringing physical LPI `doorbell` when the vPE is not resident
    /// ([`NO_DOORBELL`]: none) (§5.3.26).
    pub fn vmapti(device_id: u32, event_id: u32, vpe_id: u16, vintid: u32, doorbell: u32) -> Self {
        let mut c = Self::new(Opcode::Vmapti)
            .device(device_id)
            .event(event_id)
            .vpe(vpe_id);
        c.0[2] = u64::from(vintid) | (u64::from(doorbell) << 32);
        c
    }

    /// VMAPI: VMAPTI with vINTID == EventID (§5.3.25).
    pub fn vmapi(device_id: u32, event_id: u32, vpe_id: u16, doorbell: u32) -> Self {
        let mut c = Self::new(Opcode::Vmapi)
            .device(device_id)
            .event(event_id)
            .vpe(vpe_id);
        c.0[2] = u64::from(doorbell) << 32;
        c
    }

    /// VMOVP: vPE `vpe_id` now lives at redistributor `rd`; `seq` and
    /// `its_list` synchronise several ITSs where GITS_TYPER.VMOVP is 0
    /// (§5.3.29). Vigil's vCPUs are pinned, so it never moves a vPE; this
    /// is here for the day they are not.
    pub fn vmovp(vpe_id: u16, rd: RdBase, seq: u16, its_list: u16) -> Self {
        let mut c = Self::new(Opcode::Vmovp).vpe(vpe_id).rdbase(rd);
        c.0[0] |= u64::from(seq) << 32;
        c.0[1] |= u64::from(its_list);
        c
    }

    /// VMOVI: move (device, event)'s vLPI to vPE `vpe_id`, with its new
    /// doorbell (§5.3.27). Its pending state moves with it.
    pub fn vmovi(device_id: u32, event_id: u32, vpe_id: u16, doorbell: u32) -> Self {
        let mut c = Self::new(Opcode::Vmovi)
            .device(device_id)
            .event(event_id)
            .vpe(vpe_id);
        c.0[2] = 1 | (u64::from(doorbell) << 32);
        c
    }

    /// VSYNC: complete all earlier effects on vPE `vpe_id` (§5.3.28).
    pub fn vsync(vpe_id: u16) -> Self {
        Self::new(Opcode::Vsync).vpe(vpe_id)
    }

    /// VINVALL: reload the configuration of every vLPI of vPE `vpe_id`
    /// (§5.3.23).
    pub fn vinvall(vpe_id: u16) -> Self {
        Self::new(Opcode::Vinvall).vpe(vpe_id)
    }

    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.0[0] as u8)
    }

    /// The command as the ITS reads it from memory (little-endian).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, dw) in self.0.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&dw.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are composed field by field from the command layouts
    // in IHI 0069H §5.3, independently of the builder's helpers.

    #[test]
    fn mapd_layout() {
        let c = ItsCommand::mapd(0xdead_beef, 0x1234_5678_9a00, 5, true);
        assert_eq!(c.0[0], 0xdead_beef_0000_0008);
        assert_eq!(c.0[1], 4, "Size is EventID bits minus one");
        assert_eq!(c.0[2], (1 << 63) | 0x1234_5678_9a00);
        assert_eq!(c.0[3], 0);
        let unmap = ItsCommand::mapd(7, 0, 1, false);
        assert_eq!(unmap.0, [0x7_0000_0008, 0, 0, 0]);
        // ITT_addr holds bits [51:8] only.
        let c = ItsCommand::mapd(1, 0xfffa_0000_0000_01ff, 16, true);
        assert_eq!(c.0[2], (1 << 63) | 0x000a_0000_0000_0100);
        assert_eq!(c.0[1], 15);
    }

    #[test]
    fn mapc_layout() {
        let c = ItsCommand::mapc(0x1234, RdBase(3), true);
        assert_eq!(c.0, [0x09, 0, (1 << 63) | (3 << 16) | 0x1234, 0]);
        let pa = RdBase::new(true, 9, 0x080c_0000);
        assert_eq!(pa, RdBase(0x080c));
        let c = ItsCommand::mapc(2, pa, false);
        assert_eq!(c.0[2], (0x080c << 16) | 2);
        assert_eq!(RdBase::new(false, 9, 0x080c_0000), RdBase(9));
    }

    #[test]
    fn mapti_and_mapi_layout() {
        let c = ItsCommand::mapti(0x11, 0x22, 8192 + 5, 3);
        assert_eq!(c.0, [0x11_0000_000a, (8197 << 32) | 0x22, 3, 0]);
        let c = ItsCommand::mapi(0x11, 0x22, 0xffff);
        assert_eq!(c.0, [0x11_0000_000b, 0x22, 0xffff, 0]);
    }

    #[test]
    fn event_commands_layout() {
        for (c, op) in [
            (ItsCommand::movi(0xffff_ffff, 0xffff_ffff, 7), 0x01u64),
            (ItsCommand::int(0xffff_ffff, 0xffff_ffff), 0x03),
            (ItsCommand::clear(0xffff_ffff, 0xffff_ffff), 0x04),
            (ItsCommand::inv(0xffff_ffff, 0xffff_ffff), 0x0c),
            (ItsCommand::discard(0xffff_ffff, 0xffff_ffff), 0x0f),
        ] {
            assert_eq!(c.0[0], 0xffff_ffff_0000_0000 | op);
            assert_eq!(c.0[1], 0xffff_ffff);
            assert_eq!(c.0[2], if op == 0x01 { 7 } else { 0 });
            assert_eq!(c.0[3], 0);
            assert_eq!(c.opcode().map(|o| o as u64), Some(op));
        }
    }

    #[test]
    fn collection_commands_layout() {
        assert_eq!(ItsCommand::invall(0xbeef).0, [0x0d, 0, 0xbeef, 0]);
        assert_eq!(ItsCommand::sync(RdBase(2)).0, [0x05, 0, 2 << 16, 0]);
        assert_eq!(
            ItsCommand::movall(RdBase(1), RdBase(3)).0,
            [0x0e, 0, 1 << 16, 3 << 16]
        );
        // RDbase is 36 bits wide: [51:16].
        assert_eq!(
            ItsCommand::sync(RdBase(u64::MAX)).0[2],
            0x000f_ffff_ffff_0000
        );
    }

    #[test]
    fn bytes_are_little_endian_doublewords() {
        let b = ItsCommand::int(0x0403_0201, 0x0807_0605).to_bytes();
        assert_eq!(&b[0..8], &[0x03, 0, 0, 0, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(&b[8..16], &[0x05, 0x06, 0x07, 0x08, 0, 0, 0, 0]);
        assert!(b[16..].iter().all(|&x| x == 0));
    }

    #[test]
    fn opcode_round_trip() {
        for v in 0..=255u8 {
            if let Some(op) = Opcode::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
        assert_eq!(Opcode::from_u8(0x02), None);
        assert_eq!(Opcode::from_u8(0x2c), None);
    }

    #[test]
    fn virtual_commands_layout() {
        let c = ItsCommand::vmapp(0xbeef, RdBase(5), 0x0004_1234_5670_0000, 16, true);
        assert_eq!(c.0[0], 0x29);
        assert_eq!(c.0[1], 0xbeef << 32);
        assert_eq!(c.0[2], (1 << 63) | (5 << 16));
        // VPT_addr keeps bits [51:16]; VPT_size is ID bits minus one.
        assert_eq!(c.0[3], 0x0004_1234_5670_0000 | 15);
        let c = ItsCommand::vmapp(1, RdBase(0), 0x1_2345, 16, false);
        assert_eq!(c.0[2], 0);
        assert_eq!(c.0[3], 0x1_0000 | 15);

        let c = ItsCommand::vmapti(0x11, 0x22, 3, 8192 + 7, 9000);
        assert_eq!(
            c.0,
            [0x11_0000_002a, (3 << 32) | 0x22, (9000 << 32) | 8199, 0]
        );
        let c = ItsCommand::vmapti(1, 2, 0xffff, 8192, NO_DOORBELL);
        assert_eq!(c.0[1], (0xffff << 32) | 2);
        assert_eq!(c.0[2], (1023 << 32) | 8192);

        let c = ItsCommand::vmovi(0x11, 0x22, 4, 9001);
        assert_eq!(c.0, [0x11_0000_0021, (4 << 32) | 0x22, (9001 << 32) | 1, 0]);
        assert_eq!(ItsCommand::vsync(7).0, [0x25, 7 << 32, 0, 0]);
        assert_eq!(ItsCommand::vinvall(7).0, [0x2d, 7 << 32, 0, 0]);
        let c = ItsCommand::vmapi(0x11, 0x22, 3, 9000);
        assert_eq!(c.0, [0x11_0000_002b, (3 << 32) | 0x22, 9000 << 32, 0]);
        let c = ItsCommand::vmovp(0x1234, RdBase(7), 0xabcd, 0x0005);
        assert_eq!(c.0, [(0xabcd << 32) | 0x22, (0x1234 << 32) | 5, 7 << 16, 0]);
        for op in [0x21u8, 0x22, 0x25, 0x29, 0x2a, 0x2b, 0x2d] {
            assert_eq!(Opcode::from_u8(op).map(|o| o as u8), Some(op));
        }
    }
}
