//! Logical decoding over SPI: the task's publication and slot ([`slot`]), and reading a batch of
//! pgoutput changes into envelope messages ([`peek`]). Main thread only.

pub(crate) mod peek;
pub(crate) mod slot;
