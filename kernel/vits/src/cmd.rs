//! ITS command encoding (IHI 0069 §5.3, "ITS commands"): every command is
//! 32 bytes, four little-endian doublewords DW0..DW3.
//!
//! | field | where |
//! |---|---|
//! | command number | DW0 \[7:0\] |
//! | DeviceID | DW0 \[63:32\] |
//! | EventID | DW1 \[31:0\] |
//! | pINTID (MAPTI) | DW1 \[63:32\] |
//! | Size (MAPD) | DW1 \[4:0\]: EventID bits - 1 |
//! | ITT_addr (MAPD) | DW2 \[51:8\] |
//! | ICID | DW2 \[15:0\] |
//! | RDbase (MAPC, SYNC, MOVALL) | DW2 \[51:16\] |
//! | RDbase2 (MOVALL) | DW3 \[51:16\] |
//! | V (MAPD, MAPC) | DW2 \[63\] |
//!
//! RDbase is a processor number: `GITS_TYPER.PTA` = 0.

/// Command numbers (IHI 0069 §5.3, the command number of each command).
pub mod opcode {
    /// MOVI
    pub const MOVI: u8 = 0x01;
    /// INT
    pub const INT: u8 = 0x03;
    /// CLEAR
    pub const CLEAR: u8 = 0x04;
    /// SYNC
    pub const SYNC: u8 = 0x05;
    /// MAPD
    pub const MAPD: u8 = 0x08;
    /// MAPC
    pub const MAPC: u8 = 0x09;
    /// MAPTI
    pub const MAPTI: u8 = 0x0a;
    /// MAPI
    pub const MAPI: u8 = 0x0b;
    /// INV
    pub const INV: u8 = 0x0c;
    /// INVALL
    pub const INVALL: u8 = 0x0d;
    /// MOVALL
    pub const MOVALL: u8 = 0x0e;
    /// DISCARD
    pub const DISCARD: u8 = 0x0f;
}

/// A decoded ITS command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Map a DeviceID to an ITT (`valid`) or unmap it.
    Mapd {
        /// DeviceID.
        device: u32,
        /// EventID bits - 1.
        size: u8,
        /// Guest-physical ITT address (256-byte aligned).
        itt_addr: u64,
        /// V.
        valid: bool,
    },
    /// Map a collection to a redistributor (`valid`) or unmap it.
    Mapc {
        /// ICID.
        icid: u16,
        /// Target redistributor (processor number).
        rdbase: u64,
        /// V.
        valid: bool,
    },
    /// Map (DeviceID, EventID) to LPI `intid` in collection `icid`.
    Mapti {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
        /// The (virtual) LPI INTID.
        intid: u32,
        /// ICID.
        icid: u16,
    },
    /// MAPTI with INTID = EventID.
    Mapi {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
        /// ICID.
        icid: u16,
    },
    /// Move an event to another collection.
    Movi {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
        /// New ICID.
        icid: u16,
    },
    /// Remove the mapping of an event and clear its pending state.
    Discard {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Reload the configuration of one LPI.
    Inv {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Reload the configuration of all LPIs of a collection.
    Invall {
        /// ICID.
        icid: u16,
    },
    /// Make the LPI of an event pending.
    Int {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Clear the pending state of the LPI of an event.
    Clear {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Wait for the effects of earlier commands on a redistributor.
    Sync {
        /// Redistributor (processor number).
        rdbase: u64,
    },
    /// Move all pending LPIs of one redistributor to another.
    Movall {
        /// From.
        rdbase1: u64,
        /// To.
        rdbase2: u64,
    },
}

const ITT_ADDR_MASK: u64 = 0x000f_ffff_ffff_ff00;
const RDBASE_MASK: u64 = 0xf_ffff_ffff; // 36 bits, DWn[51:16]

fn rdbase(dw: u64) -> u64 {
    (dw >> 16) & RDBASE_MASK
}

/// A command as it sits in the queue, its fields read where the table
/// above puts them: the vITS runs the commonest commands straight from it,
/// without building a [`Command`] first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCommand(pub [u64; 4]);

impl RawCommand {
    /// Command number.
    #[inline(always)]
    pub fn opcode(self) -> u8 {
        self.0[0] as u8
    }
    /// DeviceID.
    #[inline(always)]
    pub fn device(self) -> u32 {
        (self.0[0] >> 32) as u32
    }
    /// EventID.
    #[inline(always)]
    pub fn event(self) -> u32 {
        self.0[1] as u32
    }
    /// pINTID (MAPTI).
    #[inline(always)]
    pub fn intid(self) -> u32 {
        (self.0[1] >> 32) as u32
    }
    /// ICID.
    #[inline(always)]
    pub fn icid(self) -> u16 {
        self.0[2] as u16
    }
    /// Size (MAPD): EventID bits - 1.
    pub fn size(self) -> u8 {
        (self.0[1] & 0x1f) as u8
    }
    /// ITT_addr (MAPD).
    pub fn itt_addr(self) -> u64 {
        self.0[2] & ITT_ADDR_MASK
    }
    /// V (MAPD, MAPC).
    pub fn valid(self) -> bool {
        self.0[2] >> 63 != 0
    }
    /// RDbase (MAPC, SYNC, MOVALL).
    #[inline(always)]
    pub fn rdbase(self) -> u64 {
        rdbase(self.0[2])
    }
    /// RDbase2 (MOVALL).
    pub fn rdbase2(self) -> u64 {
        rdbase(self.0[3])
    }
    /// Whether it is a command that walks mappings (MAPD, MAPC, INVALL,
    /// MOVALL), which a slice may split.
    #[inline(always)]
    pub fn walks(self) -> bool {
        matches!(
            self.opcode(),
            opcode::MAPD | opcode::MAPC | opcode::INVALL | opcode::MOVALL
        )
    }
}

impl Command {
    /// Decode 4 doublewords; `Err(opcode)` for a command number this ITS
    /// does not implement (GICv4 commands included).
    pub fn decode(dw: [u64; 4]) -> Result<Command, u8> {
        let raw = RawCommand(dw);
        let (device, event, icid) = (raw.device(), raw.event(), raw.icid());
        Ok(match raw.opcode() {
            opcode::MAPD => Command::Mapd {
                device,
                size: raw.size(),
                itt_addr: raw.itt_addr(),
                valid: raw.valid(),
            },
            opcode::MAPC => Command::Mapc {
                icid,
                rdbase: raw.rdbase(),
                valid: raw.valid(),
            },
            opcode::MAPTI => Command::Mapti {
                device,
                event,
                intid: raw.intid(),
                icid,
            },
            opcode::MAPI => Command::Mapi {
                device,
                event,
                icid,
            },
            opcode::MOVI => Command::Movi {
                device,
                event,
                icid,
            },
            opcode::DISCARD => Command::Discard { device, event },
            opcode::INV => Command::Inv { device, event },
            opcode::INVALL => Command::Invall { icid },
            opcode::INT => Command::Int { device, event },
            opcode::CLEAR => Command::Clear { device, event },
            opcode::SYNC => Command::Sync {
                rdbase: raw.rdbase(),
            },
            opcode::MOVALL => Command::Movall {
                rdbase1: raw.rdbase(),
                rdbase2: raw.rdbase2(),
            },
            other => return Err(other),
        })
    }

    /// Encode (for test guests and host tests); reserved fields are zero.
    pub fn encode(&self) -> [u64; 4] {
        let dev = |op: u8, d: u32| u64::from(op) | (u64::from(d) << 32);
        let v = |b: bool| u64::from(b) << 63;
        match *self {
            Command::Mapd {
                device,
                size,
                itt_addr,
                valid,
            } => [
                dev(opcode::MAPD, device),
                u64::from(size & 0x1f),
                (itt_addr & ITT_ADDR_MASK) | v(valid),
                0,
            ],
            Command::Mapc {
                icid,
                rdbase,
                valid,
            } => [
                u64::from(opcode::MAPC),
                0,
                u64::from(icid) | ((rdbase & RDBASE_MASK) << 16) | v(valid),
                0,
            ],
            Command::Mapti {
                device,
                event,
                intid,
                icid,
            } => [
                dev(opcode::MAPTI, device),
                u64::from(event) | (u64::from(intid) << 32),
                u64::from(icid),
                0,
            ],
            Command::Mapi {
                device,
                event,
                icid,
            } => [
                dev(opcode::MAPI, device),
                u64::from(event),
                u64::from(icid),
                0,
            ],
            Command::Movi {
                device,
                event,
                icid,
            } => [
                dev(opcode::MOVI, device),
                u64::from(event),
                u64::from(icid),
                0,
            ],
            Command::Discard { device, event } => {
                [dev(opcode::DISCARD, device), u64::from(event), 0, 0]
            }
            Command::Inv { device, event } => [dev(opcode::INV, device), u64::from(event), 0, 0],
            Command::Invall { icid } => [u64::from(opcode::INVALL), 0, u64::from(icid), 0],
            Command::Int { device, event } => [dev(opcode::INT, device), u64::from(event), 0, 0],
            Command::Clear { device, event } => {
                [dev(opcode::CLEAR, device), u64::from(event), 0, 0]
            }
            Command::Sync { rdbase } => {
                [u64::from(opcode::SYNC), 0, (rdbase & RDBASE_MASK) << 16, 0]
            }
            Command::Movall { rdbase1, rdbase2 } => [
                u64::from(opcode::MOVALL),
                0,
                (rdbase1 & RDBASE_MASK) << 16,
                (rdbase2 & RDBASE_MASK) << 16,
            ],
        }
    }

    /// The 32 bytes as they sit in the command queue.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, dw) in self.encode().iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&dw.to_le_bytes());
        }
        b
    }
}
