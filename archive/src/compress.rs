//! Compression of archive streams: gzip members or zstd frames, and a parallel compressor that turns a
//! byte stream into independently compressed chunks written in order.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// How archives are compressed. Gzip is what upstream reads; zstd is for archives only ferry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
}

impl Codec {
    /// gzip level 1 and zstd level 1: the dump rate, not the ratio, bounds a backup's duration.
    const GZIP_LEVEL: u32 = 1;
    const ZSTD_LEVEL: i32 = 1;

    pub fn extension(self) -> &'static str {
        match self {
            Codec::Gzip => "tar.gz",
            Codec::Zstd => "tar.zst",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "gzip" => Some(Codec::Gzip),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Recognises a stream by its magic bytes.
    pub fn sniff(first: &[u8]) -> Option<Codec> {
        match first {
            [0x1f, 0x8b, ..] => Some(Codec::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// One self-contained gzip member or zstd frame.
    pub fn compress_chunk(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 3),
                    flate2::Compression::new(Self::GZIP_LEVEL),
                );
                enc.write_all(data)?;
                enc.finish()
            }
            Codec::Zstd => zstd::bulk::compress(data, Self::ZSTD_LEVEL),
        }
    }

    /// A streaming encoder into an in-memory buffer (drained by the caller as it grows).
    pub(crate) fn encoder(self) -> io::Result<Encoder> {
        Ok(match self {
            Codec::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(Self::GZIP_LEVEL),
            )),
            Codec::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                Self::ZSTD_LEVEL,
            )?),
        })
    }

    /// A decoder that reads every concatenated member or frame.
    pub fn decoder<'a, R: Read + 'a>(self, input: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        })
    }
}

pub(crate) enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Compressed bytes produced so far, removed from the buffer.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
        }
    }

    pub(crate) fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// The result of compressing a stream with [`ParallelCompressor`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CompressedSpool {
    /// Bytes read from the source.
    pub raw_size: u64,
    /// Bytes written to the sink.
    pub compressed_size: u64,
}

/// Reads a stream in chunks and compresses them on several threads, writing members in order.
#[derive(Debug, Clone, Copy)]
pub struct ParallelCompressor {
    pub codec: Codec,
    pub workers: usize,
    pub chunk_size: usize,
}

impl ParallelCompressor {
    pub fn new(codec: Codec) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ParallelCompressor {
            codec,
            workers: cores.clamp(1, 8),
            chunk_size: 1 << 20,
        }
    }

    /// Compresses all of `source` into `sink`. `inspect` sees every raw chunk in order (for digests
    /// and counts) on the reading thread.
    pub fn run<R: Read, W: Write + Send>(
        &self,
        mut source: R,
        sink: &mut W,
        mut inspect: impl FnMut(&[u8]),
    ) -> io::Result<CompressedSpool> {
        let codec = self.codec;
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(self.workers * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, io::Result<Vec<u8>>)>(self.workers * 2);
        std::thread::scope(|scope| {
            for _ in 0..self.workers {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                scope.spawn(move || {
                    loop {
                        let job = job_rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((seq, chunk))) = job else { break };
                        if done_tx.send((seq, codec.compress_chunk(&chunk))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done_tx);
            // The workers hold the only receivers: once they stop (the writer failed), sending a
            // job fails instead of blocking the reader for ever.
            drop(job_rx);
            let writer = scope.spawn(move || -> io::Result<u64> {
                let mut pending = BTreeMap::new();
                let mut next = 0u64;
                let mut written = 0u64;
                for (seq, compressed) in done_rx {
                    pending.insert(seq, compressed?);
                    while let Some(member) = pending.remove(&next) {
                        sink.write_all(&member)?;
                        written += member.len() as u64;
                        next += 1;
                    }
                }
                sink.flush()?;
                Ok(written)
            });
            let mut raw_size = 0u64;
            let mut seq = 0u64;
            let read_result = loop {
                let mut chunk = vec![0u8; self.chunk_size];
                let n = match fill(&mut source, &mut chunk) {
                    Ok(n) => n,
                    Err(e) => break Err(e),
                };
                if n == 0 {
                    break Ok(());
                }
                chunk.truncate(n);
                inspect(&chunk);
                raw_size += n as u64;
                if job_tx.send((seq, chunk)).is_err() {
                    break Ok(()); // the writer failed; its error is reported below
                }
                seq += 1;
            };
            drop(job_tx);
            let written = writer
                .join()
                .map_err(|_| io::Error::other("compression writer panicked"))?;
            read_result?;
            Ok(CompressedSpool {
                raw_size,
                compressed_size: written?,
            })
        })
    }
}

/// Reads until `buf` is full or the source ends.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_members_decode_to_the_source_in_order() {
        let source: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [Codec::Gzip, Codec::Zstd] {
            let compressor = ParallelCompressor {
                codec,
                workers: 3,
                chunk_size: 64 << 10,
            };
            let mut out = Vec::new();
            let mut seen = 0usize;
            let spool = compressor
                .run(&source[..], &mut out, |c| seen += c.len())
                .unwrap();
            assert_eq!(spool.raw_size as usize, source.len());
            assert_eq!(seen, source.len());
            assert_eq!(spool.compressed_size as usize, out.len());
            assert_eq!(Codec::sniff(&out), Some(codec));
            let mut back = Vec::new();
            codec
                .decoder(&out[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == source, "{codec:?} round trip");
        }
    }

    /// A sink that takes `room` bytes, then fails as a full disk does.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room < buf.len() {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
            }
            self.room -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_sink_that_fails_ends_the_run_with_its_error() {
        // Far more input than the channels hold: the reader must not wait for ever on workers
        // that stopped when the writer failed.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let source = std::io::repeat(7).take(64 << 20);
            let compressor = ParallelCompressor {
                codec: Codec::Gzip,
                workers: 2,
                chunk_size: 64 << 10,
            };
            let _ = tx.send(compressor.run(source, &mut Full { room: 1 << 10 }, |_| {}));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the compressor hung on a failed sink");
        let e = result.expect_err("a full sink is an error");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}
