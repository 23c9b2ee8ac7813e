//! Per-interrupt state (IHI 0069 ch. 4, "Interrupt states" and the
//! interrupt handling state machine).

pub use vigil_gic::intid::{IntId, IntKind, LPI_BASE, SPI_BASE};

/// The EL1 virtual timer PPI (CNTV), linked to the physical one with the LR
/// HW bit.
pub const VTIMER_PPI: u32 = 27;
/// The maintenance interrupt PPI of the host (INTID 25).
pub const MAINTENANCE_PPI: u32 = 25;

/// State of one virtual interrupt.
///
/// The *pending* state is split as in the architecture: `latch` is the
/// pending latch (edges, `ISPENDR`, `INT`), `line` the input level of a
/// level-sensitive interrupt. While the interrupt sits in a list register
/// (`loaded`), the LR owns the pending bit that was moved into it; new
/// events set `latch` again and are not lost.
#[derive(Clone, Debug)]
pub(crate) struct Irq {
    pub intid: u32,
    pub enabled: bool,
    pub latch: bool,
    pub line: bool,
    pub active: bool,
    pub priority: u8,
    pub group1: bool,
    /// Level-sensitive (`ICFGR` = 0b00) rather than edge-triggered.
    pub level: bool,
    /// vCPU the interrupt is delivered to: the owning vCPU for SGI/PPI, the
    /// IROUTER target for SPIs, the collection's vCPU for LPIs. `None` when
    /// it names no vCPU of this VM.
    pub target: Option<usize>,
    /// Raw `GICD_IROUTER<n>` (SPIs only).
    pub irouter: u64,
    /// Physical INTID when hardware-linked (LR HW bit).
    pub hw: Option<u32>,
    /// The vCPU whose list of "active or pending" interrupts holds this one.
    pub owner: Option<usize>,
    /// In a list register of `owner` right now (between flush and fold).
    pub loaded: bool,
    /// The guest cleared the pending state (ICPENDR, CLEAR) while loaded:
    /// the LR's pending bit must not fold back.
    pub sw_pending_cleared: bool,
    /// The guest wrote the active state (IS/ICACTIVER) while loaded: the
    /// written value wins over the LR's at fold-back.
    pub sw_active_written: bool,
    /// Mapping generation (LPIs): unique per `MAPTI` instance of a vINTID.
    pub gen: u64,
    /// Number of ITEs that map to this LPI.
    pub map_refs: u32,
}

impl Irq {
    pub fn new(intid: u32, target: Option<usize>) -> Self {
        Self {
            intid,
            enabled: false,
            latch: false,
            line: false,
            active: false,
            priority: 0,
            group1: true,
            // SGIs are always edge; PPIs and SPIs reset to level.
            level: matches!(IntId::new(intid).kind(), IntKind::Ppi | IntKind::Spi),
            target,
            irouter: 0,
            hw: None,
            owner: None,
            loaded: false,
            sw_pending_cleared: false,
            sw_active_written: false,
            gen: 0,
            map_refs: 0,
        }
    }

    /// Back to the state [`Irq::new`] gives an LPI, field by field: a whole
    /// struct assignment is a memcpy call, a good part of a DISCARD.
    pub fn reset_lpi(&mut self) {
        self.enabled = false;
        self.latch = false;
        self.line = false;
        self.active = false;
        self.priority = 0;
        self.group1 = true;
        self.level = false;
        self.target = None;
        self.irouter = 0;
        self.hw = None;
        self.owner = None;
        self.loaded = false;
        self.sw_pending_cleared = false;
        self.sw_active_written = false;
        self.gen = 0;
        self.map_refs = 0;
    }

    /// Pending as the architecture defines it: latch, or the line of a
    /// level-sensitive interrupt.
    pub fn pending(&self) -> bool {
        self.latch || (self.level && self.line)
    }

    pub fn is_lpi(&self) -> bool {
        IntId::new(self.intid).is_lpi()
    }
}
