//! The archive's bytes on their way to the controller, hashed and counted as they go.

use std::io::{self, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;

use ferry_archive::{DataKey, Recipients, hex};

use super::{Event, Sealed};

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
        Ok((self.sent, hex(&self.hasher.finalize())))
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

/// Where the archive goes: straight to the controller, or through age first so that no plaintext
/// leaves the host.
pub enum Sink {
    Plain(ChannelWriter),
    Sealed(Box<Sealing>),
}

/// The encrypting side of a [`Sink`].
pub struct Sealing {
    plain: Hashing<age::stream::StreamWriter<ChannelWriter>>,
    key: DataKey,
    recipients: Recipients,
}

/// What a finished sink sent: size and sha256 of the bytes on the wire, and for a sealed archive
/// the plaintext's and its wrapped key.
pub struct Sent {
    pub size: u64,
    pub sha256: String,
    pub sealed: Option<Sealed>,
}

impl Sink {
    pub fn new(
        events: Sender<Event>,
        recipients: Option<&Recipients>,
        archive: String,
    ) -> io::Result<Sink> {
        let channel = ChannelWriter::new(events);
        Ok(match recipients {
            None => Sink::Plain(channel),
            Some(recipients) => {
                let key = DataKey::generate(&archive);
                Sink::Sealed(Box::new(Sealing {
                    plain: Hashing::new(key.seal(channel)?),
                    key,
                    recipients: recipients.clone(),
                }))
            }
        })
    }

    pub fn finish(self) -> io::Result<Sent> {
        match self {
            Sink::Plain(channel) => {
                let (size, sha256) = channel.finish()?;
                Ok(Sent {
                    size,
                    sha256,
                    sealed: None,
                })
            }
            Sink::Sealed(sealing) => {
                let Sealing {
                    plain,
                    mut key,
                    recipients,
                } = *sealing;
                let (plain_size, plain_sha256, sealer) = plain.finish();
                let (size, sha256) = sealer.finish()?.finish()?;
                let wrapped_key = key.wrap(&recipients).map_err(io::Error::other)?;
                Ok(Sent {
                    size,
                    sha256,
                    sealed: Some(Sealed {
                        plain_size,
                        plain_sha256,
                        wrapped_key,
                        recipients: key.recipients,
                    }),
                })
            }
        }
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(data),
            Sink::Sealed(s) => s.plain.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(s) => s.plain.flush(),
        }
    }
}

/// A `Write` that counts and hashes what passes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Size, sha256 and the inner writer.
    pub fn finish(self) -> (u64, String, W) {
        (self.size, hex(&self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
