//! Host ranges: `cp[01:20].example.com`, `db-[a:c]`, `web[1:10:2]`.

/// Expands every `[start:end(:step)]` in `pattern`; a name without brackets expands to itself.
pub fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| format!("unclosed '[' in host range {pattern:?}"))?;
    let (head, spec, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(format!(
            "host range [{spec}] must be [start:end] or [start:end:step]"
        ));
    }
    let step: usize = match parts.get(2) {
        Some(s) => s
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("bad step {s:?} in host range [{spec}]"))?,
        None => 1,
    };
    let (start, end) = (parts[0], parts[1]);
    let items: Vec<String> = if let (Ok(a), Ok(b)) = (start.parse::<u64>(), end.parse::<u64>()) {
        if a > b {
            return Err(format!("host range [{spec}] runs backwards"));
        }
        let width = if start.len() > 1 && start.starts_with('0') {
            start.len()
        } else {
            0
        };
        (a..=b)
            .step_by(step)
            .map(|n| format!("{n:0width$}"))
            .collect()
    } else if start.len() == 1
        && end.len() == 1
        && start.chars().all(|c| c.is_ascii_alphabetic())
        && end.chars().all(|c| c.is_ascii_alphabetic())
    {
        let (a, b) = (start.as_bytes()[0], end.as_bytes()[0]);
        if a > b {
            return Err(format!("host range [{spec}] runs backwards"));
        }
        (a..=b)
            .step_by(step)
            .map(|c| (c as char).to_string())
            .collect()
    } else {
        return Err(format!(
            "host range [{spec}] must be numeric ([01:20]) or single letters ([a:f])"
        ));
    };
    let tails = expand(tail)?;
    let mut out = Vec::with_capacity(items.len() * tails.len());
    for item in &items {
        for tail in &tails {
            out.push(format!("{head}{item}{tail}"));
        }
    }
    Ok(out)
}
