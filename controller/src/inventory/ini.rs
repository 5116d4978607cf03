//! Ansible's INI inventory format.

use super::{Inventory, InventoryError, Vars, literal, range};

/// An IPv6 host in brackets, with or without a port: a host line, not a section header.
fn bracketed_address(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((inside, after)) = rest.split_once(']') else {
        return false;
    };
    inside.contains(':')
        && inside
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        && (after.is_empty() || after.starts_with(':') || after.starts_with(char::is_whitespace))
}

enum Section {
    Hosts(String),
    Vars(String),
    Children(String),
}

pub(super) fn parse(inv: &mut Inventory, file: &str, text: &str) -> Result<(), InventoryError> {
    let mut section = Section::Hosts("ungrouped".into());
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let err = |message: String| InventoryError {
            file: file.to_string(),
            line: Some(line_no),
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && !bracketed_address(line) {
            let header = line
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .ok_or_else(|| {
                    err(format!(
                        "section header {line:?} is missing its closing ']'"
                    ))
                })?;
            let (name, kind) = header.split_once(':').unwrap_or((header, "hosts"));
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(err(format!("bad group name {name:?}")));
            }
            section = match kind {
                "hosts" => Section::Hosts(name.into()),
                "vars" => Section::Vars(name.into()),
                "children" => Section::Children(name.into()),
                other => {
                    return Err(err(format!(
                        "unknown section type ':{other}' (expected :vars or :children)"
                    )));
                }
            };
            inv.group_mut(name);
            continue;
        }
        match &section {
            Section::Hosts(group) => {
                let tokens = split_tokens(line).map_err(&err)?;
                let (first, rest) = tokens
                    .split_first()
                    .ok_or_else(|| err("empty host line".into()))?;
                let mut vars = Vars::new();
                for token in rest {
                    let (k, v) = token
                        .split_once('=')
                        .ok_or_else(|| err(format!("host variable {token:?} is not key=value")))?;
                    // A host line's value is unquoted first (shlex), then read as a literal.
                    vars.insert(k.to_string(), literal(&unquote(v)));
                }
                let (pattern, port) = split_port(first).map_err(&err)?;
                if let Some(port) = port {
                    vars.entry("ansible_port".into()).or_insert(port.into());
                }
                let names = range::expand(pattern).map_err(&err)?;
                for name in names {
                    inv.add_host(&name, Some(group), vars.clone());
                }
            }
            Section::Vars(group) => {
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| err(format!("group variable {line:?} is not key=value")))?;
                let key = k.trim();
                if key.is_empty() {
                    return Err(err("group variable with an empty name".into()));
                }
                inv.group_mut(group).vars.insert(key.into(), literal(v));
            }
            Section::Children(group) => {
                if line.contains(char::is_whitespace) {
                    return Err(err(format!(
                        "child group {line:?} must be a single group name"
                    )));
                }
                inv.add_child(group, line);
            }
        }
    }
    Ok(())
}

/// Removes shell quoting from a token (`"a b"` → `a b`, `'x'` → `x`), as shlex does.
fn unquote(token: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in token.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => out.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, c) => out.push(c),
        }
    }
    out
}

/// `host:port` shorthand, `[v6]:port`, leaving bare IPv6 addresses and ranges alone.
fn split_port(token: &str) -> Result<(&str, Option<u16>), String> {
    if let Some(rest) = token.strip_prefix('[')
        && let Some((inside, after)) = rest.split_once(']')
        && inside.contains(':')
    {
        let port = match after.strip_prefix(':') {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| format!("bad port {p:?} in {token:?}"))?,
            ),
            None => None,
        };
        return Ok((inside, port));
    }
    if token.matches(':').count() == 1
        && !token.contains('[')
        && let Some((host, port)) = token.rsplit_once(':')
    {
        let port = port
            .parse()
            .map_err(|_| format!("bad port {port:?} in {token:?}"))?;
        return Ok((host, Some(port)));
    }
    Ok((token, None))
}

/// Splits on whitespace, keeping quoted values together.
fn split_tokens(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                current.push(c);
            }
            (None, '#') if current.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            (None, c) => current.push(c),
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    Ok(tokens)
}
