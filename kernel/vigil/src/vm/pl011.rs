//! A virtual PL011 UART (ARM PrimeCell UART, DDI 0183): what the guest
//! writes goes to the hypervisor console tagged with the VM's name; bytes
//! typed on the console go to the VM that has the focus.
//!
//! Transmission completes instantly, so the TX FIFO is always empty. The
//! receive FIFO holds 32 bytes. Interrupt state (RIS/IMSC/MIS) follows the
//! TRM; the line level is exposed for the virtual GIC.

use spin::Mutex;

use crate::bus::{MmioCtx, MmioDevice};
use vigil_vgic::Kick;

const FIFO: usize = 32;

// Registers (DDI 0183G, table 3-1) and bits.
const DR: u64 = 0x00;
const RSR: u64 = 0x04;
const FR: u64 = 0x18;
const ILPR: u64 = 0x20;
const IBRD: u64 = 0x24;
const FBRD: u64 = 0x28;
const LCR_H: u64 = 0x2c;
const CR: u64 = 0x30;
const IFLS: u64 = 0x34;
const IMSC: u64 = 0x38;
const RIS: u64 = 0x3c;
const MIS: u64 = 0x40;
const ICR: u64 = 0x44;
const DMACR: u64 = 0x48;

const FR_RXFE: u32 = 1 << 4;
const FR_TXFE: u32 = 1 << 7;
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;

/// PrimeCell identification: PL011 r1p5 (PeriphID 0x00341011) and the
/// PrimeCell ID 0xb105f00d, one byte per word from 0xfe0.
const ID: [u32; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

pub struct Pl011 {
    vm: usize,
    state: Mutex<State>,
}

struct State {
    rx: [u8; FIFO],
    rx_head: usize,
    rx_len: usize,
    ris: u32,
    imsc: u32,
    cr: u32,
    lcr_h: u32,
    ibrd: u32,
    fbrd: u32,
    ifls: u32,
    ilpr: u32,
    dmacr: u32,
}

impl Pl011 {
    pub const fn new(vm: usize) -> Self {
        Self {
            vm,
            state: Mutex::new(State {
                rx: [0; FIFO],
                rx_head: 0,
                rx_len: 0,
                // TX FIFO empty from the start (as QEMU's model).
                ris: INT_TX,
                imsc: 0,
                cr: 0x300,
                lcr_h: 0,
                ibrd: 0,
                fbrd: 0,
                ifls: 0x12,
                ilpr: 0,
                dmacr: 0,
            }),
        }
    }

    /// Queue bytes typed on the console. Bytes beyond the FIFO are dropped
    /// (as the hardware would, with an overrun).
    pub fn receive(&self, byte: u8) {
        let kick = {
            let mut s = self.state.lock();
            if s.rx_len < FIFO {
                let at = (s.rx_head + s.rx_len) % FIFO;
                s.rx[at] = byte;
                s.rx_len += 1;
            }
            s.ris |= INT_RX | INT_RT;
            // Under the lock (lock order: UART, then vGIC), or a racing
            // read on another CPU could apply its older level last.
            crate::vm::set_uart_line(self.vm, s.level())
        };
        crate::vm::kick_vm(self.vm, kick);
    }
}

impl Pl011 {
    /// Whether the receive FIFO can take another byte.
    pub fn has_room(&self) -> bool {
        self.state.lock().rx_len < FIFO
    }
}

impl State {
    /// The interrupt output (UARTINTR): any unmasked raw interrupt.
    fn level(&self) -> bool {
        self.ris & self.imsc != 0
    }
}

impl MmioDevice for Pl011 {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, _width: u8) -> u64 {
        let mut s = self.state.lock();
        let v = match offset {
            DR => {
                if s.rx_len == 0 {
                    0
                } else {
                    let b = s.rx[s.rx_head];
                    s.rx_head = (s.rx_head + 1) % FIFO;
                    s.rx_len -= 1;
                    if s.rx_len == 0 {
                        s.ris &= !(INT_RX | INT_RT);
                    }
                    b as u32
                }
            }
            RSR => 0,
            FR => FR_TXFE | if s.rx_len == 0 { FR_RXFE } else { 0 },
            ILPR => s.ilpr,
            IBRD => s.ibrd,
            FBRD => s.fbrd,
            LCR_H => s.lcr_h,
            CR => s.cr,
            IFLS => s.ifls,
            IMSC => s.imsc,
            RIS => s.ris,
            MIS => s.ris & s.imsc,
            DMACR => s.dmacr,
            0xfe0..=0xffc if offset.is_multiple_of(4) => ID[((offset - 0xfe0) / 4) as usize],
            _ => 0,
        };
        if offset == DR {
            // Reading the last byte may drop the receive interrupt, and
            // makes room for more input.
            let kick = crate::vm::set_uart_line(self.vm, s.level());
            drop(s);
            crate::vm::kick_vm(self.vm, kick);
            crate::vm::console_input_resume(self.vm);
        }
        v as u64
    }

    fn write(&self, _ctx: &MmioCtx<'_>, offset: u64, _width: u8, value: u64) -> Kick {
        let v = value as u32;
        let mut s = self.state.lock();
        match offset {
            DR => {
                drop(s);
                crate::console::guest_putc(self.vm, v as u8);
                // The byte left at once: TX stays "FIFO empty".
                s = self.state.lock();
                s.ris |= INT_TX;
            }
            RSR => {}
            ILPR => s.ilpr = v,
            IBRD => s.ibrd = v,
            FBRD => s.fbrd = v,
            LCR_H => s.lcr_h = v,
            CR => s.cr = v,
            IFLS => s.ifls = v,
            IMSC => s.imsc = v & 0x7ff,
            ICR => s.ris &= !(v & 0x7ff),
            DMACR => s.dmacr = v,
            _ => {}
        }
        crate::vm::set_uart_line(self.vm, s.level())
    }
}
