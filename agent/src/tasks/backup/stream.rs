//! The archive's bytes on their way to the controller, hashed and counted as they go.

use std::io::{self, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;

use super::Event;

const CHUNK: usize = 1 << 20;

/// A `Write` that sends 1 MiB data events, blocking while the controller is slower than us.
pub struct ChannelWriter {
    events: Sender<Event>,
    buf: Vec<u8>,
    hasher: Sha256,
    sent: u64,
    reported: u64,
}

impl ChannelWriter {
    pub fn new(events: Sender<Event>) -> Self {
        ChannelWriter {
            events,
            buf: Vec::with_capacity(CHUNK),
            hasher: Sha256::new(),
            sent: 0,
            reported: 0,
        }
    }

    /// Size and sha256 of everything sent.
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        self.send()?;
        Ok((
            self.sent,
            ferry_proto::archive::hex(&self.hasher.finalize()),
        ))
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.hasher.update(&chunk);
        self.sent += chunk.len() as u64;
        let gone = || {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the controller stopped receiving",
            )
        };
        self.events
            .blocking_send(Event::Data(chunk))
            .map_err(|_| gone())?;
        if self.sent - self.reported >= 16 << 20 {
            self.reported = self.sent;
            self.events
                .blocking_send(Event::Progress {
                    phase: "stream",
                    bytes: self.sent,
                })
                .map_err(|_| gone())?;
        }
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
