//! Logical decoding over SPI: the task's publication and slot ([`slot`]), and reading a batch of
//! pgoutput changes into envelope messages ([`batch`]). Main thread only.

pub(crate) mod batch;
pub(crate) mod slot;
