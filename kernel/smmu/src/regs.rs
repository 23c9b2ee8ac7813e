//! Register offsets and fields (IHI 0070 §6.3). Page 0 holds the control
//! registers; EVENTQ_PROD/CONS are in page 1 (offset 0x1_0000).

pub const IDR0: u64 = 0x00;
pub const IDR1: u64 = 0x04;
pub const IDR5: u64 = 0x14;
pub const CR0: u64 = 0x20;
pub const CR0ACK: u64 = 0x24;
pub const CR1: u64 = 0x28;
pub const CR2: u64 = 0x2c;
pub const GBPA: u64 = 0x44;
pub const IRQ_CTRL: u64 = 0x50;
pub const IRQ_CTRLACK: u64 = 0x54;
pub const GERROR: u64 = 0x60;
pub const GERRORN: u64 = 0x64;
pub const STRTAB_BASE: u64 = 0x80;
pub const STRTAB_BASE_CFG: u64 = 0x88;
pub const CMDQ_BASE: u64 = 0x90;
pub const CMDQ_PROD: u64 = 0x98;
pub const CMDQ_CONS: u64 = 0x9c;
pub const EVENTQ_BASE: u64 = 0xa0;
pub const EVENTQ_PROD: u64 = 0x1_00a8;
pub const EVENTQ_CONS: u64 = 0x1_00ac;

/// IDR0.S2P: stage-2 translation supported.
pub const IDR0_S2P: u32 = 1 << 0;
/// IDR0.ST_LEVEL [28:27]: 0 linear stream table only.
/// IDR1.SIDSIZE [5:0]: StreamID bits.
pub fn idr1_sidsize(idr1: u32) -> u32 {
    idr1 & 0x3f
}
/// IDR1.CMDQS [25:21] and EVENTQS [20:16]: log2 of the largest queues.
pub fn idr1_cmdqs(idr1: u32) -> u32 {
    (idr1 >> 21) & 0x1f
}
pub fn idr1_eventqs(idr1: u32) -> u32 {
    (idr1 >> 16) & 0x1f
}
/// IDR5.OAS [2:0]: output address size, encoded as VTCR_EL2.PS is.
pub fn idr5_oas_bits(idr5: u32) -> u32 {
    match idr5 & 7 {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

pub const CR0_SMMUEN: u32 = 1 << 0;
pub const CR0_EVENTQEN: u32 = 1 << 2;
pub const CR0_CMDQEN: u32 = 1 << 3;

/// CR1: queues and tables walked inner/outer write-back, inner shareable
/// (QUEUE_IC/OC/SH [5:0], TABLE_IC/OC/SH [11:6]).
pub const CR1_WB_ISH: u32 = 1 | (1 << 2) | (3 << 4) | (1 << 6) | (1 << 8) | (3 << 10);
/// CR2: RECINVSID (record C_BAD_STREAMID), PTM (no broadcast TLB
/// maintenance from the CPUs: every invalidation is a command).
pub const CR2_RECINVSID_PTM: u32 = (1 << 1) | (1 << 2);

/// GBPA: UPDATE (31), ABORT (20): with the SMMU disabled, transactions
/// abort instead of bypassing.
pub const GBPA_UPDATE: u32 = 1 << 31;
pub const GBPA_ABORT: u32 = 1 << 20;

/// IRQ_CTRL: GERROR_IRQEN (0), EVENTQ_IRQEN (2).
pub const IRQ_CTRL_GERROR_EVENTQ: u32 = 1 | (1 << 2);

/// Read/write-allocate hint of the queue and table base registers (62).
pub const BASE_RA: u64 = 1 << 62;

/// STRTAB_BASE: RA, address [51:6].
pub fn strtab_base(pa: u64) -> u64 {
    BASE_RA | (pa & 0x000f_ffff_ffff_ffc0)
}

/// STRTAB_BASE_CFG: linear format (FMT [17:16] = 0), LOG2SIZE [5:0].
pub fn strtab_base_cfg(log2size: u32) -> u32 {
    log2size & 0x3f
}

/// CMDQ_BASE / EVENTQ_BASE: RA/WA, address [51:5], LOG2SIZE [4:0].
pub fn queue_base(pa: u64, log2size: u32) -> u64 {
    BASE_RA | (pa & 0x000f_ffff_ffff_ffe0) | u64::from(log2size & 0x1f)
}

/// CMDQ_CONS.ERR [30:24]: why the command queue stopped (0: none).
pub fn cmdq_cons_err(cons: u32) -> u32 {
    (cons >> 24) & 0x7f
}

/// GERROR.CMDQ_ERR (0): a command was rejected.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
