//! A VM's real-time clock: an emulated ARM PL031 (ARM DDI 0224, "PrimeCell
//! Real Time Clock"), counting seconds from the host's clock plus an
//! offset the guest sets by writing the load register. The match
//! interrupt is not raised (Linux uses it only for wake alarms).

/// Register offsets (DDI 0224 §3.2).
pub const DR: u64 = 0x000;
pub const MR: u64 = 0x004;
pub const LR: u64 = 0x008;
pub const CR: u64 = 0x00c;
pub const IMSC: u64 = 0x010;
pub const RIS: u64 = 0x014;
pub const MIS: u64 = 0x018;
pub const ICR: u64 = 0x01c;

/// PeriphID0-3 and PCellID0-3 at 0xfe0..0xffc: part 0x031, designer ARM,
/// revision 1 (as QEMU's pl031), so an AMBA bus matches the driver.
const ID: [u32; 8] = [0x31, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// One VM's PL031.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pl031 {
    /// Guest seconds minus host seconds.
    offset: i64,
    mr: u32,
    lr: u32,
    imsc: u32,
}

impl Pl031 {
    pub const fn new() -> Self {
        Self {
            offset: 0,
            mr: 0,
            lr: 0,
            imsc: 0,
        }
    }

    /// A 32-bit read at `off` when the host's clock reads `host_secs`.
    pub fn read(&self, off: u64, host_secs: u32) -> u32 {
        match off {
            DR => (i64::from(host_secs) + self.offset) as u32,
            MR => self.mr,
            LR => self.lr,
            CR => 1, // started (RTCCR.RTCstart reads 1 once running)
            IMSC => self.imsc,
            RIS | MIS => 0,
            0xfe0..=0xffc if off.is_multiple_of(4) => ID[((off - 0xfe0) / 4) as usize],
            _ => 0,
        }
    }

    /// A 32-bit write: LR sets the time (DR counts on from it), MR and
    /// IMSC are stored; the rest is read-only or has no effect here.
    pub fn write(&mut self, off: u64, value: u32, host_secs: u32) {
        match off {
            LR => {
                self.lr = value;
                self.offset = i64::from(value) - i64::from(host_secs);
            }
            MR => self.mr = value,
            IMSC => self.imsc = value & 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_host_seconds_and_loads_a_new_time() {
        let mut r = Pl031::new();
        assert_eq!(r.read(DR, 1_800_000_000), 1_800_000_000);
        r.write(LR, 1000, 1_800_000_000);
        assert_eq!(r.read(DR, 1_800_000_005), 1005, "counts on from the load");
        assert_eq!(r.read(LR, 0), 1000);
        r.write(MR, 77, 0);
        assert_eq!(r.read(MR, 0), 77);
        assert_eq!(r.read(CR, 0), 1);
        assert_eq!(r.read(RIS, 0), 0);
        // AMBA identification: PeriphID 0x00141031, PCellID 0xb105f00d.
        let id = |base: u64| (0..4).fold(0u32, |a, i| a | r.read(base + 4 * i, 0) << (8 * i));
        assert_eq!(id(0xfe0), 0x0014_1031);
        assert_eq!(id(0xff0), 0xb105_f00d);
        r.write(DR, 5, 0);
        assert_eq!(r.read(DR, 1_800_000_010), 1010, "DR is read-only");
    }
}
