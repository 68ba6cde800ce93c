//! The virtual modem: the simulated module behind an AT command port
//! (pseudo-terminal or TCP).
pub mod at;
pub mod pty;
