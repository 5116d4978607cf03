//! Ansible host patterns: `all`, `*`, names, globs, `~regex`, `a:b`, `a,b`, `a:&b`, `a:!b`, and
//! subscripts `group[0]`, `group[-1]`, `group[1:3]`, `group[2:]`.

use std::collections::BTreeSet;

use crate::inventory::Inventory;

/// A pattern that cannot be resolved against the inventory.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("host pattern {pattern:?}: {term:?} matches no host or group in the inventory")]
    NoMatch { pattern: String, term: String },
    #[error("host pattern {pattern:?}: {message}")]
    Invalid { pattern: String, message: String },
}

/// Resolves `pattern` (and `limit`, if any, as an intersection) to host names in inventory order.
pub fn select(
    inventory: &Inventory,
    pattern: &str,
    limit: Option<&str>,
) -> Result<Vec<String>, PatternError> {
    let mut selected = resolve(inventory, pattern)?;
    if let Some(limit) = limit {
        let allowed = resolve(inventory, limit)?;
        selected.retain(|h| allowed.contains(h));
    }
    Ok(inventory
        .host_names()
        .filter(|h| selected.contains(*h))
        .map(str::to_string)
        .collect())
}

fn resolve(inventory: &Inventory, pattern: &str) -> Result<BTreeSet<String>, PatternError> {
    let terms = split(pattern);
    if terms.is_empty() {
        return Err(PatternError::Invalid {
            pattern: pattern.into(),
            message: "empty pattern".into(),
        });
    }
    let mut union = BTreeSet::new();
    let mut intersections = Vec::new();
    let mut exclusions = BTreeSet::new();
    for term in &terms {
        let (kind, body) = match term.as_bytes().first() {
            Some(b'&') => ('&', &term[1..]),
            Some(b'!') => ('!', &term[1..]),
            _ => ('+', term.as_str()),
        };
        let hosts = term_hosts(inventory, body).map_err(|message| PatternError::Invalid {
            pattern: pattern.into(),
            message,
        })?;
        if hosts.is_empty() && kind != '!' {
            return Err(PatternError::NoMatch {
                pattern: pattern.into(),
                term: body.into(),
            });
        }
        match kind {
            '&' => intersections.push(hosts),
            '!' => exclusions.extend(hosts),
            _ => union.extend(hosts),
        }
    }
    // Like Ansible: a pattern made only of exclusions/intersections starts from all hosts.
    if terms
        .iter()
        .all(|t| t.starts_with('&') || t.starts_with('!'))
    {
        union = inventory.host_names().map(str::to_string).collect();
    }
    for set in intersections {
        union.retain(|h| set.contains(h));
    }
    union.retain(|h| !exclusions.contains(h));
    Ok(union)
}

/// Splits on `,` or `:` outside brackets (so ranges and subscripts keep their colons).
fn split(pattern: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let by_comma = pattern.contains(',');
    for c in pattern.chars() {
        match c {
            '[' => {
                depth += 1;
                current.push(c);
            }
            ']' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            ',' if depth == 0 => terms.push(std::mem::take(&mut current)),
            ':' if depth == 0 && !by_comma => terms.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn term_hosts(inventory: &Inventory, term: &str) -> Result<Vec<String>, String> {
    if term == "all" || term == "*" {
        return Ok(inventory.host_names().map(str::to_string).collect());
    }
    if let Some(regex) = term.strip_prefix('~') {
        let re = regex::Regex::new(regex).map_err(|e| format!("bad regex {regex:?}: {e}"))?;
        return Ok(matching(inventory, |name| re.is_match(name)));
    }
    if let Some((base, sub)) = subscript(term)
        && (inventory.has_group(base) || inventory.has_host(base))
    {
        let hosts = exact(inventory, base);
        return slice(&hosts, sub).map_err(|e| format!("{term}: {e}"));
    }
    if inventory.has_group(term) || inventory.has_host(term) {
        return Ok(exact(inventory, term));
    }
    if term.contains(['*', '?', '[']) {
        return Ok(matching(inventory, |name| {
            glob_match::glob_match(term, name)
        }));
    }
    Ok(Vec::new())
}

fn exact(inventory: &Inventory, name: &str) -> Vec<String> {
    if inventory.has_group(name) {
        inventory.hosts_of_group(name)
    } else {
        vec![name.to_string()]
    }
}

/// Hosts whose name matches, plus the hosts of every group whose name matches.
fn matching(inventory: &Inventory, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut hosts: BTreeSet<String> = inventory
        .host_names()
        .filter(|h| pred(h))
        .map(str::to_string)
        .collect();
    for group in inventory.group_names().filter(|g| pred(g)) {
        hosts.extend(inventory.hosts_of_group(group));
    }
    hosts.into_iter().collect()
}

fn subscript(term: &str) -> Option<(&str, &str)> {
    let open = term.rfind('[')?;
    let inner = term[open + 1..].strip_suffix(']')?;
    if inner
        .chars()
        .all(|c| c.is_ascii_digit() || c == '-' || c == ':')
        && !inner.is_empty()
    {
        Some((&term[..open], inner))
    } else {
        None
    }
}

/// Python-style indexing of the group's hosts in inventory order: `[i]`, `[-1]`, `[a:b]`, `[a:]`, `[:b]`.
fn slice(hosts: &[String], sub: &str) -> Result<Vec<String>, String> {
    let len = hosts.len() as i64;
    let index = |text: &str, default: i64| -> Result<i64, String> {
        if text.is_empty() {
            return Ok(default);
        }
        let i: i64 = text.parse().map_err(|_| format!("bad index {text:?}"))?;
        Ok(if i < 0 { (len + i).max(0) } else { i.min(len) })
    };
    match sub.split_once(':') {
        None => {
            let i = index(sub, 0)?;
            Ok(hosts.get(i as usize).cloned().into_iter().collect())
        }
        Some((a, b)) => {
            let (start, end) = (index(a, 0)?, index(b, len)?);
            Ok(hosts
                .get(start as usize..end.max(start) as usize)
                .unwrap_or_default()
                .to_vec())
        }
    }
}
