//! Commands (IHI 0070 §4): 16 bytes, opcode in bits [7:0].

/// One command-queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmd(pub [u64; 2]);

pub const CFGI_STE: u64 = 0x03;
pub const CFGI_ALL: u64 = 0x04;
pub const TLBI_S12_VMALL: u64 = 0x28;
pub const TLBI_S2_IPA: u64 = 0x2a;
pub const TLBI_NSNH_ALL: u64 = 0x30;
pub const SYNC: u64 = 0x46;

impl Cmd {
    /// CMD_CFGI_STE (§4.3.1): StreamID [63:32]; Leaf (bit 64) = 1, only the
    /// STE itself changed.
    pub const fn cfgi_ste(sid: u32) -> Self {
        Self([CFGI_STE | (sid as u64) << 32, 1])
    }

    /// CMD_CFGI_ALL (§4.3.3): every cached configuration; Range [68:64] 31.
    pub const fn cfgi_all() -> Self {
        Self([CFGI_ALL, 31])
    }

    /// CMD_TLBI_S12_VMALL (§4.4.7): every TLB entry of VMID [47:32].
    pub const fn tlbi_s12_vmall(vmid: u16) -> Self {
        Self([TLBI_S12_VMALL | (vmid as u64) << 32, 0])
    }

    /// CMD_TLBI_S2_IPA (§4.4.8): stage-2 entries of VMID [47:32] for the
    /// page at `ipa` (Address [115:76] = IPA[51:12]).
    pub const fn tlbi_s2_ipa(vmid: u16, ipa: u64) -> Self {
        Self([
            TLBI_S2_IPA | (vmid as u64) << 32,
            ipa & 0x000f_ffff_ffff_f000,
        ])
    }

    /// CMD_TLBI_NSNH_ALL (§4.4.3): every non-secure non-hyp entry.
    pub const fn tlbi_nsnh_all() -> Self {
        Self([TLBI_NSNH_ALL, 0])
    }

    /// CMD_SYNC (§4.7.3) with CS [13:12] = SIG_NONE: complete when the
    /// queue's consumer has passed it.
    pub const fn sync() -> Self {
        Self([SYNC, 0])
    }

    pub fn opcode(&self) -> u64 {
        self.0[0] & 0xff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_bit_exact() {
        assert_eq!(Cmd::cfgi_ste(0x12).0, [0x0000_0012_0000_0003, 1]);
        assert_eq!(Cmd::cfgi_all().0, [0x04, 31]);
        assert_eq!(Cmd::tlbi_s12_vmall(7).0, [0x0000_0007_0000_0028, 0]);
        assert_eq!(
            Cmd::tlbi_s2_ipa(3, 0x4000_1234).0,
            [0x0000_0003_0000_002a, 0x4000_1000]
        );
        assert_eq!(Cmd::tlbi_nsnh_all().0, [0x30, 0]);
        assert_eq!(Cmd::sync().0, [0x46, 0]);
        assert_eq!(Cmd::sync().opcode(), SYNC);
    }
}
