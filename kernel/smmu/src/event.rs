//! Event records (IHI 0070 §7.3): 32 bytes; the type in bits [7:0], the
//! StreamID in [63:32], and for translation-related faults the input
//! address in bits [191:128] and (stage 2) the IPA in [255:204].

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u8,
    pub sid: u32,
    /// The transaction's input address (translation faults).
    pub input: u64,
    /// RnW (bit 99): the transaction was a read.
    pub read: bool,
    /// S2 (bit 103): the fault was in stage 2.
    pub stage2: bool,
}

pub const F_UUT: u8 = 0x01;
pub const C_BAD_STREAMID: u8 = 0x02;
pub const F_STE_FETCH: u8 = 0x03;
pub const C_BAD_STE: u8 = 0x04;
pub const F_STREAM_DISABLED: u8 = 0x06;
pub const F_TRANSLATION: u8 = 0x10;
pub const F_ADDR_SIZE: u8 = 0x11;
pub const F_ACCESS: u8 = 0x12;
pub const F_PERMISSION: u8 = 0x13;

impl Event {
    pub fn decode(r: [u64; 4]) -> Self {
        Self {
            kind: r[0] as u8,
            sid: (r[0] >> 32) as u32,
            input: r[2],
            read: (r[1] >> 35) & 1 != 0,
            stage2: (r[1] >> 39) & 1 != 0,
        }
    }

    /// Whether it is a translation-related fault (the input address means
    /// something).
    pub fn is_translation_fault(&self) -> bool {
        matches!(
            self.kind,
            F_TRANSLATION | F_ADDR_SIZE | F_ACCESS | F_PERMISSION
        )
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            F_UUT => "F_UUT",
            C_BAD_STREAMID => "C_BAD_STREAMID",
            F_STE_FETCH => "F_STE_FETCH",
            C_BAD_STE => "C_BAD_STE",
            F_STREAM_DISABLED => "F_STREAM_DISABLED",
            F_TRANSLATION => "F_TRANSLATION",
            F_ADDR_SIZE => "F_ADDR_SIZE",
            F_ACCESS => "F_ACCESS",
            F_PERMISSION => "F_PERMISSION",
            _ => "event",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage2_translation_fault_decodes() {
        // F_TRANSLATION of StreamID 0x18, a write (RnW 0), stage 2, at
        // input address 0x7000_0000.
        let r = [0x0000_0018_0000_0010, 1 << 39, 0x7000_0000, 0x7000_0000];
        let e = Event::decode(r);
        assert_eq!(e.kind, F_TRANSLATION);
        assert_eq!(e.sid, 0x18);
        assert_eq!(e.input, 0x7000_0000);
        assert!(!e.read && e.stage2);
        assert!(e.is_translation_fault());
        assert_eq!(e.name(), "F_TRANSLATION");
        let bad = Event::decode([0x0000_0005_0000_0004, 0, 0, 0]);
        assert_eq!((bad.kind, bad.sid, bad.name()), (C_BAD_STE, 5, "C_BAD_STE"));
        assert!(!bad.is_translation_fault());
    }
}
