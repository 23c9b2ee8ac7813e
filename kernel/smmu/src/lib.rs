//! The hardware-independent parts of Vigil's SMMUv3 driver (Arm IHI 0070,
//! "SMMU architecture version 3"): register offsets, stream table entries
//! for stage-2 translation, command encodings, the ring arithmetic of the
//! command and event queues, and event decoding. The kernel's `smmu` room
//! puts them at the device's addresses.

#![no_std]
#![forbid(unsafe_code)]

pub mod cmd;
pub mod event;
pub mod queue;
pub mod regs;
pub mod ste;

pub use cmd::Cmd;
pub use event::Event;
pub use queue::Queue;
pub use ste::{S2Config, Ste};
