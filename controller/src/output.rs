//! Everything the controller prints goes through here, for two promises:
//! - output into a closed pipe (`ferry history | head -1`) ends quietly; the operation goes on;
//! - with `-o json`, stdout carries exactly one JSON document, errors included. Human lines go to
//!   stderr then, and a command that printed no document gets one from [`finish`].

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

static JSON: AtomicBool = AtomicBool::new(false);
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);
static DOCUMENT: AtomicBool = AtomicBool::new(false);
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Chooses where human lines go: stdout, or stderr under `-o json`.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

fn write_to(closed: &AtomicBool, stderr: bool, args: std::fmt::Arguments<'_>) {
    if closed.load(Ordering::Relaxed) {
        return;
    }
    let result = if stderr {
        std::io::stderr().lock().write_fmt(args)
    } else {
        std::io::stdout().lock().write_fmt(args)
    };
    if result.is_err() {
        // A closed pipe or a full disk: stop printing, keep working.
        closed.store(true, Ordering::Relaxed);
    }
}

/// A line for the operator (see [`outln!`](crate::outln)).
pub fn line(args: std::fmt::Arguments<'_>) {
    if is_json() {
        write_to(&STDERR_CLOSED, true, format_args!("{args}\n"));
    } else {
        write_to(&STDOUT_CLOSED, false, format_args!("{args}\n"));
    }
}

/// An error line on stderr, remembered for the JSON document (see [`errln!`](crate::errln)).
pub fn error(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    write_to(&STDERR_CLOSED, true, format_args!("{text}\n"));
    *LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
}

/// The command's JSON document, on stdout.
pub fn json(doc: &Value) {
    DOCUMENT.store(true, Ordering::Relaxed);
    let text = serde_json::to_string_pretty(doc).unwrap_or_default();
    write_to(&STDOUT_CLOSED, false, format_args!("{text}\n"));
}

/// stdout as a writer with the same closed-pipe rule.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !STDOUT_CLOSED.load(Ordering::Relaxed)
            && std::io::stdout().lock().write_all(buf).is_err()
        {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
        if is_json() {
            DOCUMENT.store(true, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().lock().flush();
        Ok(())
    }
}

/// Under `-o json`, prints a document for a command that printed none (an error before it got
/// going, or a command with nothing more to say than its exit code).
pub fn finish(command: &str, code: i32) {
    if !is_json() || DOCUMENT.load(Ordering::Relaxed) {
        return;
    }
    let error = LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()).clone();
    json(&json!({
        "command": command,
        "exit_code": code,
        "ok": code == 0,
        "error": if code == 0 { None } else { error },
    }));
}

/// `println!` for the controller: see [`output`](crate::output).
#[macro_export]
macro_rules! outln {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}

/// `eprintln!` for the controller: see [`output`](crate::output).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::error(format_args!($($arg)*)) };
}
