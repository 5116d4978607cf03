//! Ansible host patterns with Ansible's semantics: `all`, `*`, names, globs (fnmatch), `~regex`,
//! `a:b`, `a,b`, `a:&b`, `a:!b`, and subscripts `g[0]`, `g[-1]`, `g[0:2]` (inclusive), `g[2:]`.
//!
//! Terms are evaluated as Ansible does: plain terms first (a union, in pattern order), then
//! intersections, then exclusions; a pattern of only intersections and exclusions starts from `all`.
//! The result keeps that order. A plain term that matches nothing is an error (a typo must not
//! select less than meant); an intersection or exclusion that matches nothing is a warning, as in
//! Ansible.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::inventory::Inventory;

/// A pattern that cannot be resolved against the inventory.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("host pattern {pattern:?}: {term:?} matches no host or group in the inventory")]
    NoMatch { pattern: String, term: String },
    #[error("host pattern {pattern:?}: {message}")]
    Invalid { pattern: String, message: String },
}

/// The hosts a pattern selects, in Ansible's order, and what the operator should be told.
#[derive(Debug, Default)]
pub struct Selection {
    pub hosts: Vec<String>,
    pub warnings: Vec<String>,
}

/// Resolves `pattern` (and `limit`, if any, as a filter) to host names.
pub fn select(
    inventory: &Inventory,
    pattern: &str,
    limit: Option<&str>,
) -> Result<Selection, PatternError> {
    let mut warnings = Vec::new();
    let mut hosts = evaluate(inventory, pattern, &mut warnings)?;
    if let Some(limit) = limit {
        // `@FILE`, as in Ansible: one host per line.
        let limit = match limit.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| PatternError::Invalid {
                    pattern: limit.into(),
                    message: format!("--limit file {file}: {e}"),
                })?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(","),
            None => limit.to_string(),
        };
        let allowed: BTreeSet<String> = evaluate(inventory, &limit, &mut warnings)?
            .into_iter()
            .collect();
        hosts.retain(|h| allowed.contains(h));
    }
    Ok(Selection { hosts, warnings })
}

fn evaluate(
    inventory: &Inventory,
    pattern: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, PatternError> {
    let terms = split(pattern);
    if terms.is_empty() {
        return Err(PatternError::Invalid {
            pattern: pattern.into(),
            message: "empty pattern".into(),
        });
    }
    let plain: Vec<&str> = terms
        .iter()
        .map(String::as_str)
        .filter(|t| !t.starts_with(['&', '!']))
        .collect();
    let mut ordered: Vec<&str> = if plain.is_empty() { vec!["all"] } else { plain };
    ordered.extend(
        terms
            .iter()
            .map(String::as_str)
            .filter(|t| t.starts_with('&')),
    );
    ordered.extend(
        terms
            .iter()
            .map(String::as_str)
            .filter(|t| t.starts_with('!')),
    );
    let mut hosts: Vec<String> = Vec::new();
    for term in ordered {
        let (kind, body) = match term.as_bytes().first() {
            Some(b'&') => ('&', &term[1..]),
            Some(b'!') => ('!', &term[1..]),
            _ => ('+', term),
        };
        let matched =
            match_one(inventory, body, warnings).map_err(|message| PatternError::Invalid {
                pattern: pattern.into(),
                message,
            })?;
        let Some(matched) = matched else {
            let subscript = subscript_hint(body);
            if kind == '+' {
                if let Some(hint) = subscript {
                    return Err(PatternError::Invalid {
                        pattern: pattern.into(),
                        message: hint,
                    });
                }
                return Err(PatternError::NoMatch {
                    pattern: pattern.into(),
                    term: body.into(),
                });
            }
            if let Some(hint) = subscript {
                warnings.push(format!("host pattern {pattern:?}: {hint}"));
                if kind == '&' {
                    hosts.clear();
                }
                continue;
            }
            warnings.push(format!(
                "host pattern {pattern:?}: {body:?} in {term:?} matches no host or group in the inventory{}",
                if kind == '!' {
                    "; it excludes nothing (a typo?)"
                } else {
                    "; the intersection with it is empty"
                }
            ));
            if kind == '&' {
                hosts.clear();
            }
            continue;
        };
        match kind {
            '!' => {
                let out: BTreeSet<&String> = matched.iter().collect();
                hosts.retain(|h| !out.contains(h));
            }
            '&' => {
                let keep: BTreeSet<&String> = matched.iter().collect();
                hosts.retain(|h| keep.contains(h));
            }
            _ => {
                for h in matched {
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                }
            }
        }
    }
    Ok(hosts)
}

/// Splits on `,` if there is one, else on `:`; brackets keep their colons.
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

/// Why a term that reads as a subscript matched nothing, if it does (`cp0[12]` is item 12 of `cp0`).
fn subscript_hint(term: &str) -> Option<String> {
    let c = (!term.starts_with('~'))
        .then(|| SUBSCRIPT.captures(term))
        .flatten()?;
    Some(format!(
        "{term:?} reads as a subscript of {:?} (as in Ansible), which matches no host or group; for a glob over names write e.g. \"{term}*\"",
        &c[1]
    ))
}

/// Ansible's `PATTERN_WITH_SUBSCRIPT`: an expression, then `[i]`, `[-i]`, `[a:b]` or `[a:]`.
static SUBSCRIPT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$").expect("a valid regex")
});

/// The hosts one term selects, or None when it names nothing in the inventory.
fn match_one(
    inventory: &Inventory,
    term: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<String>>, String> {
    if inventory.has_host(term) {
        return Ok(Some(vec![term.to_string()]));
    }
    let captures = (!term.starts_with('~'))
        .then(|| SUBSCRIPT.captures(term))
        .flatten();
    let Some(c) = captures else {
        return enumerate(inventory, term);
    };
    let number = |i: usize| -> Result<Option<i64>, String> {
        c.get(i)
            .filter(|m| !m.as_str().is_empty())
            .map(|m| {
                m.as_str()
                    .parse::<i64>()
                    .map_err(|e| format!("{term}: {e}"))
            })
            .transpose()
    };
    let Some(hosts) = enumerate(inventory, &c[1])? else {
        return Ok(None);
    };
    if c.get(4).is_some_and(|m| m.as_str() == "-") {
        warnings.push(format!(
            "{term}: use [x:y] inclusive subscripts instead of [x-y], which Ansible has removed"
        ));
    }
    let len = hosts.len() as i64;
    let picked = match (number(2)?, number(3)?, number(5)?) {
        (Some(i), _, _) => single(&hosts, i),
        (None, Some(start), end) => match end {
            // `[a:0]` is `[a]`, as in Ansible.
            Some(0) => single(&hosts, start),
            end => {
                let end = end.unwrap_or(len - 1);
                let (from, to) = (start.min(len), (end + 1).clamp(0, len));
                hosts
                    .get(from as usize..to.max(from) as usize)
                    .unwrap_or_default()
                    .to_vec()
            }
        },
        _ => hosts,
    };
    Ok(Some(picked))
}

/// Python indexing: negative from the end, out of range selects nothing.
fn single(hosts: &[String], i: i64) -> Vec<String> {
    let len = hosts.len() as i64;
    let index = if i < 0 { len + i } else { i };
    if (0..len).contains(&index) {
        vec![hosts[index as usize].clone()]
    } else {
        Vec::new()
    }
}

/// Ansible's `_enumerate_matches`: the hosts of every matching group (in the order groups were
/// first seen), then, for a regex, a glob or when no group matched, the matching hosts.
fn enumerate(inventory: &Inventory, expr: &str) -> Result<Option<Vec<String>>, String> {
    let matcher = Matcher::new(expr)?;
    let groups: Vec<&str> = inventory
        .group_names()
        .filter(|g| matcher.matches(g))
        .collect();
    let mut hosts: Vec<String> = groups
        .iter()
        .flat_map(|g| inventory.hosts_of_group(g))
        .collect();
    let special = expr.starts_with('~') || expr.contains(['.', '?', '*', '[']);
    let mut named_host = false;
    if groups.is_empty() || special {
        for h in inventory.host_names().filter(|h| matcher.matches(h)) {
            named_host = true;
            hosts.push(h.to_string());
        }
    }
    Ok((!groups.is_empty() || named_host).then_some(hosts))
}

/// A glob (Python's fnmatch: whole name, case-sensitive) or a `~regex` (matched at the start).
struct Matcher(Regex);

impl Matcher {
    fn new(expr: &str) -> Result<Self, String> {
        let source = match expr.strip_prefix('~') {
            Some(re) => format!("^(?:{re})"),
            None => format!("^(?s:{})$", fnmatch(expr)),
        };
        Regex::new(&source)
            .map(Matcher)
            .map_err(|e| format!("bad pattern {expr:?}: {e}"))
    }

    fn matches(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

/// Translates a shell glob as Python's `fnmatch.translate` does.
fn fnmatch(glob: &str) -> String {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                // A class runs to the next `]` (a `]` right after `[` or `[!` belongs to it).
                let mut j = i + 1;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str("\\[");
                } else {
                    let inner: String = chars[i + 1..j].iter().collect();
                    let (negate, body) = match inner.strip_prefix('!') {
                        Some(rest) => (true, rest.to_string()),
                        None => (false, inner),
                    };
                    let body = body.replace('\\', "\\\\").replace('[', "\\[");
                    out.push('[');
                    if negate {
                        out.push('^');
                    }
                    out.push_str(&body);
                    out.push(']');
                    i = j;
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    out
}
