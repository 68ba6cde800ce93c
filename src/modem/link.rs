//! How the host is wired to the virtual modem's AT port (`--link`): a
//! small type below both the modem ([`crate::modem`]) and its session,
//! so neither imports the other for it.

/// How the host is wired to the module's AT port, which decides what a
/// reboot does to the port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Link {
    /// The USB AT port (`/dev/ttyUSB2`): it vanishes on every reboot and a
    /// new one appears (seed `004_88405b99851b7db5.txt` §3.1).
    #[default]
    Usb,
    /// A UART (or a USB-UART adapter): the same port through reboots; the
    /// line goes quiet, then `RDY` arrives on it.
    Uart,
}
