//! Writes an archive as a stream, entry by entry, recording each entry for the manifest.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::compress::{Codec, Encoder};
use crate::manifest::{Entry, EntryKind};

/// Owner-only modes in the tar headers: the archive holds secrets.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// A streaming archive writer. Entries are compressed into the current gzip member (zstd frame);
/// [`ArchiveWriter::splice`] closes it and copies an already-compressed body in between.
pub struct ArchiveWriter<W: Write> {
    out: W,
    codec: Codec,
    member: Option<Encoder>,
    mtime: u64,
    entries: Vec<Entry>,
}

impl<W: Write> ArchiveWriter<W> {
    /// `mtime` (Unix seconds) is stamped on every header.
    pub fn new(out: W, codec: Codec, mtime: u64) -> Self {
        ArchiveWriter {
            out,
            codec,
            member: None,
            mtime,
            entries: Vec::new(),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// A directory entry; `host_mode` is recorded in the manifest.
    pub fn dir(&mut self, path: &str, host_mode: u32) -> io::Result<()> {
        let header = self.header(
            &format!("{}/", path.trim_end_matches('/')),
            0,
            tar::EntryType::Directory,
            DIR_MODE,
        )?;
        self.compressed(&header)?;
        self.entries.push(Entry {
            path: path.trim_end_matches('/').to_string(),
            kind: EntryKind::Dir,
            mode: host_mode,
            size: 0,
            sha256: String::new(),
        });
        Ok(())
    }

    /// A file entry of exactly `size` bytes read from `content`.
    pub fn file(
        &mut self,
        path: &str,
        host_mode: u32,
        size: u64,
        mut content: impl Read,
    ) -> io::Result<()> {
        let header = self.header(path, size, tar::EntryType::Regular, FILE_MODE)?;
        self.compressed(&header)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut copied = 0u64;
        while copied < size {
            let want = buf.len().min((size - copied) as usize);
            let n = content.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{path} shrank while it was archived ({copied} of {size} bytes)"),
                ));
            }
            hasher.update(&buf[..n]);
            self.compressed(&buf[..n])?;
            copied += n as u64;
        }
        self.compressed(&padding(size))?;
        self.entries.push(Entry {
            path: path.to_string(),
            kind: EntryKind::File,
            mode: host_mode,
            size,
            sha256: crate::hex(&hasher.finalize()),
        });
        Ok(())
    }

    /// A file entry from memory.
    pub fn bytes(&mut self, path: &str, host_mode: u32, data: &[u8]) -> io::Result<()> {
        self.file(path, host_mode, data.len() as u64, data)
    }

    /// A file entry whose body was compressed elsewhere (as members/frames of this codec): the header
    /// closes the current member, `compressed` is copied as is, and the padding opens the next one.
    pub fn splice(
        &mut self,
        path: &str,
        host_mode: u32,
        size: u64,
        sha256: &str,
        mut compressed: impl Read,
    ) -> io::Result<u64> {
        let header = self.header(path, size, tar::EntryType::Regular, FILE_MODE)?;
        self.compressed(&header)?;
        self.end_member()?;
        let copied = io::copy(&mut compressed, &mut self.out)?;
        self.compressed(&padding(size))?;
        self.entries.push(Entry {
            path: path.to_string(),
            kind: EntryKind::File,
            mode: host_mode,
            size,
            sha256: sha256.to_string(),
        });
        Ok(copied)
    }

    /// Pushes everything written so far to the sink (a sync flush of the current member), so a reader
    /// sees it before a slow step.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(member) = self.member.as_mut() {
            member.flush()?;
            let pending = member.take();
            self.out.write_all(&pending)?;
        }
        self.out.flush()
    }

    /// Writes the end-of-archive blocks, closes the last member and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.compressed(&[0u8; 1024])?;
        self.end_member()?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(
        &self,
        path: &str,
        size: u64,
        kind: tar::EntryType,
        mode: u32,
    ) -> io::Result<[u8; 512]> {
        let mut header = tar::Header::new_ustar();
        header.set_path(path)?;
        header.set_size(size);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root")?;
        header.set_groupname("root")?;
        header.set_cksum();
        let mut block = [0u8; 512];
        block.copy_from_slice(header.as_bytes());
        Ok(block)
    }

    fn compressed(&mut self, data: &[u8]) -> io::Result<()> {
        if self.member.is_none() {
            self.member = Some(self.codec.encoder()?);
        }
        if let Some(member) = self.member.as_mut() {
            member.write_all(data)?;
            let pending = member.take();
            if !pending.is_empty() {
                self.out.write_all(&pending)?;
            }
        }
        Ok(())
    }

    fn end_member(&mut self) -> io::Result<()> {
        if let Some(member) = self.member.take() {
            self.out.write_all(&member.finish()?)?;
        }
        Ok(())
    }
}

fn padding(size: u64) -> Vec<u8> {
    vec![0u8; ((512 - size % 512) % 512) as usize]
}
