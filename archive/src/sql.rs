//! What a `db/dump.sql` may ask of `psql`: the SQL pg_dump writes, and none of psql's own
//! meta-commands but the ones pg_dump itself writes (`\restrict` / `\unrestrict` and the `\.` that
//! ends COPY data). [`DumpGuard`] sits between the archive and `psql`'s stdin: it lexes the dump as
//! psql does and stops at the first line that asks for anything else, before that line is passed
//! on. `\connect` is refused too: a load goes into one temporary database, and neither upstream's
//! `pg_dump` invocation nor ferry's writes it (no `-C`).
//!
//! This is defence in depth: the controller proves the archive's digest before any byte is sent.

use std::io::{self, Write};

/// Why a dump was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("db/dump.sql line {line}: {why}; nothing from that line on was run")]
pub struct Refused {
    pub line: u64,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    Normal,
    /// A standard string ('…'): only '' escapes a quote.
    Single,
    /// An escape string (E'…'): a backslash escapes the next character.
    Escape,
    Double,
    Dollar(String),
    LineComment,
    Block(u32),
}

/// A writer that passes a plain-SQL dump through line by line and refuses the first line holding
/// a psql meta-command (or a COPY other than `COPY … FROM stdin`).
pub struct DumpGuard<W: Write> {
    inner: W,
    pending: Vec<u8>,
    lex: Lex,
    /// Inside COPY data (after `COPY … FROM stdin;`, until `\.`).
    copy: bool,
    /// The current statement's words outside strings and comments, lowercased (its start only).
    statement: String,
    line: u64,
    refused: Option<Refused>,
}

/// The longest COPY statement kept to look for `FROM stdin` in.
const COPY_LIMIT: usize = 1 << 20;

impl<W: Write> DumpGuard<W> {
    pub fn new(inner: W) -> Self {
        DumpGuard {
            inner,
            pending: Vec::new(),
            lex: Lex::Normal,
            copy: false,
            statement: String::new(),
            line: 0,
            refused: None,
        }
    }

    /// Why the dump was refused, if it was.
    pub fn refused(&self) -> Option<&Refused> {
        self.refused.as_ref()
    }

    /// Checks and passes on what is left (a last line without a newline); the inner writer back.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.pass(&line)?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn pass(&mut self, line: &[u8]) -> io::Result<()> {
        self.admit(line)?;
        self.inner.write_all(line)
    }

    /// Checks one line; a refusal is kept and returned as an error.
    fn admit(&mut self, line: &[u8]) -> io::Result<()> {
        self.line += 1;
        match self.check(line) {
            Ok(()) => Ok(()),
            Err(why) => {
                let refused = Refused {
                    line: self.line,
                    why,
                };
                self.refused = Some(refused.clone());
                Err(io::Error::new(io::ErrorKind::InvalidData, refused))
            }
        }
    }

    /// One line (with its newline, if any) against psql's lexer.
    fn check(&mut self, raw: &[u8]) -> Result<(), String> {
        if self.copy {
            // COPY data: only its end matters (the bulk of a dump, so bytes, not text).
            let line = raw.strip_suffix(b"\n").unwrap_or(raw);
            if line.strip_suffix(b"\r").unwrap_or(line) == b"\\." {
                self.copy = false;
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end_matches(['\n', '\r']);
        let chars: Vec<char> = line.chars().collect();
        let mut copy_starts = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            match &mut self.lex {
                Lex::Normal => {
                    if copy_starts && !c.is_whitespace() {
                        return Err("text after a COPY … FROM stdin statement on its line".into());
                    }
                    match c {
                        '\\' => return meta_command(&chars[i..]),
                        '\'' => {
                            let prefix_e = i > 0
                                && matches!(chars[i - 1], 'e' | 'E')
                                && (i < 2 || !is_ident(chars[i - 2]));
                            self.lex = if prefix_e { Lex::Escape } else { Lex::Single };
                        }
                        '"' => self.lex = Lex::Double,
                        '-' if next == Some('-') => {
                            self.lex = Lex::LineComment;
                        }
                        '/' if next == Some('*') => {
                            self.lex = Lex::Block(1);
                            i += 1;
                        }
                        '$' if i == 0 || !is_ident(chars[i - 1]) => {
                            if let Some(tag) = dollar_tag(&chars[i..]) {
                                i += tag.chars().count() + 1;
                                self.lex = Lex::Dollar(tag);
                            }
                        }
                        ';' => {
                            copy_starts = self.end_statement()?;
                        }
                        _ => {
                            // Only a COPY's words matter (all of them, to find FROM stdin); of
                            // any other statement, enough to see it is not a COPY.
                            let head = self.statement.trim_start();
                            let keep = if head.len() < 4 {
                                true
                            } else {
                                head.starts_with("copy") && self.statement.len() < COPY_LIMIT
                            };
                            if keep {
                                self.statement.extend(c.to_lowercase());
                            }
                        }
                    }
                }
                Lex::Single => {
                    if c == '\'' {
                        // Whether a backslash escapes this quote depends on the session's
                        // standard_conforming_strings, which the dump can change: refuse rather
                        // than guess where the string ends.
                        let backslashes =
                            chars[..i].iter().rev().take_while(|&&b| b == '\\').count();
                        if backslashes % 2 == 1 {
                            return Err(
                                "a quote after a backslash in a '…' string (it ends the string or not depending on standard_conforming_strings)".into(),
                            );
                        }
                        if next == Some('\'') {
                            i += 1;
                        } else {
                            self.lex = Lex::Normal;
                            self.space();
                        }
                    }
                }
                Lex::Escape => match c {
                    '\\' => i += 1,
                    '\'' if next == Some('\'') => i += 1,
                    '\'' => {
                        self.lex = Lex::Normal;
                        self.space();
                    }
                    _ => {}
                },
                Lex::Double => {
                    if c == '"' {
                        if next == Some('"') {
                            i += 1;
                        } else {
                            self.lex = Lex::Normal;
                            self.space();
                        }
                    }
                }
                Lex::Dollar(tag) => {
                    if c == '$' {
                        let close: Vec<char> = format!("${tag}$").chars().collect();
                        if chars[i..].starts_with(&close) {
                            i += close.len() - 1;
                            self.lex = Lex::Normal;
                            self.space();
                        }
                    }
                }
                Lex::LineComment => {}
                Lex::Block(depth) => {
                    if c == '/' && next == Some('*') {
                        *depth += 1;
                        i += 1;
                    } else if c == '*' && next == Some('/') {
                        *depth -= 1;
                        i += 1;
                        if *depth == 0 {
                            self.lex = Lex::Normal;
                            self.space();
                        }
                    }
                }
            }
            i += 1;
        }
        if self.lex == Lex::LineComment {
            self.lex = Lex::Normal;
        }
        if self.lex == Lex::Normal {
            self.space();
        }
        if copy_starts {
            self.copy = true;
        }
        Ok(())
    }

    /// A word break in the statement's words (bounded).
    fn space(&mut self) {
        if !self.statement.is_empty()
            && !self.statement.ends_with(' ')
            && self.statement.len() < COPY_LIMIT
        {
            self.statement.push(' ');
        }
    }

    /// A statement ended: whether COPY data follows. A COPY other than `… FROM stdin` is refused
    /// (pg_dump writes no other, and `COPY … PROGRAM` runs a command).
    fn end_statement(&mut self) -> Result<bool, String> {
        let statement = std::mem::take(&mut self.statement);
        let words: Vec<&str> = statement.split_whitespace().collect();
        if words.first() != Some(&"copy") {
            return Ok(false);
        }
        let from_stdin = words.windows(2).any(|w| w[0] == "from" && w[1] == "stdin");
        if from_stdin && !words.contains(&"program") {
            Ok(true)
        } else {
            Err("a COPY that is not `COPY … FROM stdin` (pg_dump writes no other)".into())
        }
    }
}

/// What `\…` at `rest` asks: allowed only for pg_dump's own `\restrict KEY` / `\unrestrict KEY`.
fn meta_command(rest: &[char]) -> Result<(), String> {
    let text: String = rest.iter().collect();
    let mut words = text[1..].split_whitespace();
    let command = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    match command {
        "restrict" | "unrestrict"
            if args.len() == 1 && args[0].chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "psql meta-command `\\{}` refused (a dump may hold only pg_dump's \\restrict, \\unrestrict and COPY's \\.)",
            command.chars().take(32).collect::<String>()
        )),
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The tag of a dollar quote starting at `s` (`$$` → "", `$fn$` → "fn"), or None (`$1`).
fn dollar_tag(s: &[char]) -> Option<String> {
    let mut tag = String::new();
    for (k, &c) in s.iter().enumerate().skip(1) {
        if c == '$' {
            return Some(tag);
        }
        let ok = if k == 1 {
            c.is_alphabetic() || c == '_'
        } else {
            c.is_alphanumeric() || c == '_'
        };
        if !ok {
            return None;
        }
        tag.push(c);
    }
    None
}

impl<W: Write> Write for DumpGuard<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(r) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::InvalidData, r.clone()));
        }
        let mut rest = buf;
        // A line begun in an earlier write ends first.
        if !self.pending.is_empty() {
            let Some(pos) = memchr::memchr(b'\n', rest) else {
                self.pending.extend_from_slice(rest);
                return Ok(buf.len());
            };
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(&rest[..=pos]);
            self.pass(&line)?;
            rest = &rest[pos + 1..];
        }
        // Whole lines: each checked, the run of checked ones passed on in one write.
        let mut checked = 0;
        while let Some(pos) = memchr::memchr(b'\n', &rest[checked..]) {
            let end = checked + pos + 1;
            if let Err(e) = self.admit(&rest[checked..end]) {
                self.inner.write_all(&rest[..checked])?;
                return Err(e);
            }
            checked = end;
        }
        self.inner.write_all(&rest[..checked])?;
        self.pending.extend_from_slice(&rest[checked..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dump: &str) -> (String, Option<Refused>) {
        let mut guard = DumpGuard::new(Vec::new());
        // Written in uneven pieces, as a stream arrives.
        let mut result = Ok(());
        for piece in dump.as_bytes().chunks(7) {
            if let Err(e) = guard.write_all(piece) {
                result = Err(e);
                break;
            }
        }
        let refused = guard.refused().cloned();
        let out = if result.is_ok() {
            guard.finish().unwrap()
        } else {
            std::mem::take(&mut guard.inner)
        };
        (String::from_utf8(out).unwrap(), refused)
    }

    const PG_DUMP: &str = "\\restrict abc123XYZ\n\
        --\n-- PostgreSQL database dump\n--\n\
        SET standard_conforming_strings = on;\n\
        SELECT pg_catalog.set_config('search_path', '', false);\n\
        CREATE FUNCTION public.f() RETURNS text AS $_$ SELECT '\\! not a command' $_$ LANGUAGE sql;\n\
        COMMENT ON TABLE public.devices IS 'it''s a \\ backslash';\n\
        /* a /* nested */ comment with \\! inside */\n\
        COPY public.devices (name, spec) FROM stdin;\n\
        dev1\t\\N\n\
        \\!dev2\t{\"a\": \"b\\\\c\"}\n\
        \\.\n\
        SELECT E'\\'' AS q;\n\
        \\unrestrict abc123XYZ\n";

    #[test]
    fn pg_dump_output_passes_whole() {
        let (out, refused) = run(PG_DUMP);
        assert_eq!(refused, None);
        assert_eq!(out, PG_DUMP);
    }

    #[test]
    fn a_meta_command_stops_before_its_line() {
        for bad in [
            "\\! touch /tmp/owned\n",
            "SELECT 1; \\! id\n",
            "SELECT 1 \\g\n",
            "\\connect flightctl\n",
            "\\copy t from '/etc/shadow'\n",
            "\\set ON_ERROR_STOP 0\n",
            "\\restrict a b\n",
            "\\.\n",
        ] {
            let dump = format!("CREATE TABLE t (a int);\n{bad}SELECT 2;\n");
            let (out, refused) = run(&dump);
            let refused = refused.unwrap_or_else(|| panic!("{bad:?} passed"));
            assert_eq!(refused.line, 2, "{bad:?}");
            assert_eq!(out, "CREATE TABLE t (a int);\n", "{bad:?}");
        }
    }

    #[test]
    fn strings_that_hide_a_command_from_one_reading_are_refused() {
        // Under standard_conforming_strings=off the string does not end at the second quote.
        let (_, refused) = run("SELECT 'a\\' \\! id '';\n");
        assert!(refused.is_some());
        // A COPY that runs a program, or reads a file on the server.
        assert!(run("COPY t FROM PROGRAM 'id';\n").1.is_some());
        assert!(run("COPY t FROM '/etc/passwd';\n").1.is_some());
        // COPY data ends only at \. : a meta-command after it is caught again.
        let (_, refused) = run("COPY t (a) FROM stdin;\n1\n\\.\n\\! id\n");
        assert_eq!(refused.unwrap().line, 4);
    }
}
