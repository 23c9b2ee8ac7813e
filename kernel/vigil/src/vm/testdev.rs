//! Vigil's MMIO test device (`vigil,test-device`), for the MMIO emulation
//! scenarios:
//! - 0x000..0x0ff: 256 bytes of scratch storage, little-endian like RAM;
//! - 0x100..0x107: the read-only constant 0x8081_8283_8485_8687;
//! - 0x200: reads the number of accesses before this one;
//! - 0x208: a write resets that count.

use spin::Mutex;

use crate::bus::{MmioCtx, MmioDevice};
use vigil_vgic::Kick;

const PATTERN: u64 = 0x8081_8283_8485_8687;

pub struct TestDevice {
    state: Mutex<State>,
}

struct State {
    scratch: [u8; 256],
    accesses: u64,
}

impl TestDevice {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                scratch: [0; 256],
                accesses: 0,
            }),
        }
    }
}

impl MmioDevice for TestDevice {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        let mut s = self.state.lock();
        let count = s.accesses;
        s.accesses += 1;
        let w = width as usize;
        match offset {
            o if o as usize + w <= 256 => {
                let mut b = [0u8; 8];
                b[..w].copy_from_slice(&s.scratch[o as usize..o as usize + w]);
                u64::from_le_bytes(b)
            }
            o @ 0x100..=0x107 if o as usize + w <= 0x108 => PATTERN >> ((o - 0x100) * 8),
            0x200 => count,
            _ => 0,
        }
    }

    fn write(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        let mut s = self.state.lock();
        s.accesses += 1;
        let w = width as usize;
        match offset {
            o if o as usize + w <= 256 => {
                s.scratch[o as usize..o as usize + w].copy_from_slice(&value.to_le_bytes()[..w]);
            }
            0x208 => s.accesses = 0,
            _ => {}
        }
        Kick::default()
    }
}
