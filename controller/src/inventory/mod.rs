//! Ansible-style inventories: INI and YAML, groups with `children`, group and host vars, host ranges.
//!
//! Parsing turns a file into an [`Inventory`]; after that it is trusted. Variable precedence follows
//! Ansible: `all` < parent groups < child groups (deeper wins, then group name order) < host vars.

mod ini;
mod range;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use indexmap::IndexMap;
use serde_json::Value;

pub use range::expand as expand_range;

/// Variables: name to value.
pub type Vars = BTreeMap<String, Value>;

/// A malformed inventory: names the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct InventoryError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Group {
    pub hosts: Vec<String>,
    pub children: Vec<String>,
    pub vars: Vars,
}

/// A parsed inventory.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Host name to its own vars, in the order hosts first appear.
    pub(crate) hosts: IndexMap<String, Vars>,
    pub(crate) groups: BTreeMap<String, Group>,
}

/// Where and how to reach one host's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// What is dialled, and the name the agent's certificate must carry.
    pub address: String,
    pub port: u16,
    /// The name the agent's certificate must carry (its CN): `ferry_agent_name`, else the inventory
    /// name. An agent that answers under another name is refused before any call.
    pub agent_name: String,
}

impl Inventory {
    /// Reads an inventory file; the format is chosen by extension (`.yml`/`.yaml`) or content.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| InventoryError {
            file: file.clone(),
            line: None,
            message: format!("cannot read inventory: {e}"),
        })?;
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        );
        Self::parse(&file, &text, is_yaml)
    }

    /// Parses inventory text; `file` is used in error messages.
    pub fn parse(file: &str, text: &str, is_yaml: bool) -> Result<Self, InventoryError> {
        let mut inventory = if is_yaml {
            yaml::parse(file, text)?
        } else {
            ini::parse(file, text)?
        };
        inventory.finish(file)?;
        Ok(inventory)
    }

    pub(crate) fn add_host(&mut self, name: &str, vars: Vars) {
        self.hosts.entry(name.to_string()).or_default().extend(vars);
    }

    pub(crate) fn group_mut(&mut self, name: &str) -> &mut Group {
        self.groups.entry(name.to_string()).or_default()
    }

    /// Adds `all` and `ungrouped`, and rejects cycles in `children`.
    fn finish(&mut self, file: &str) -> Result<(), InventoryError> {
        let grouped: BTreeSet<String> = self
            .groups
            .iter()
            .filter(|(name, _)| name.as_str() != "all")
            .flat_map(|(_, g)| g.hosts.iter().cloned())
            .collect();
        let ungrouped: Vec<String> = self
            .hosts
            .keys()
            .filter(|h| !grouped.contains(*h))
            .cloned()
            .collect();
        self.group_mut("ungrouped").hosts = ungrouped;
        let top: Vec<String> = self
            .groups
            .keys()
            .filter(|g| g.as_str() != "all")
            .filter(|g| !self.groups.values().any(|p| p.children.contains(g)))
            .cloned()
            .collect();
        let all = self.group_mut("all");
        for g in top {
            if !all.children.contains(&g) {
                all.children.push(g);
            }
        }
        for name in self.groups.keys() {
            let mut path = Vec::new();
            self.check_cycle(name, &mut path)
                .map_err(|cycle| InventoryError {
                    file: file.to_string(),
                    line: None,
                    message: format!("group children form a cycle: {}", cycle.join(" -> ")),
                })?;
        }
        Ok(())
    }

    fn check_cycle(&self, group: &str, path: &mut Vec<String>) -> Result<(), Vec<String>> {
        if path.iter().any(|g| g == group) {
            path.push(group.to_string());
            return Err(path.clone());
        }
        path.push(group.to_string());
        if let Some(g) = self.groups.get(group) {
            for child in &g.children {
                self.check_cycle(child, path)?;
            }
        }
        path.pop();
        Ok(())
    }

    /// Adds hosts known elsewhere (the catalog's retired hosts) to `ungrouped`, so patterns can
    /// name them.
    pub fn add_ungrouped(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if !self.hosts.contains_key(&name) {
                self.hosts.insert(name.clone(), Vars::new());
                self.group_mut("ungrouped").hosts.push(name);
            }
        }
        let all = self.group_mut("all");
        if !all.children.iter().any(|c| c == "ungrouped") {
            all.children.push("ungrouped".into());
        }
    }

    /// Host names in inventory order.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    pub fn has_group(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    pub fn has_host(&self, name: &str) -> bool {
        self.hosts.contains_key(name)
    }

    /// Every host in `group` and its descendants, in inventory order.
    pub fn hosts_of_group(&self, group: &str) -> Vec<String> {
        if group == "all" {
            return self.hosts.keys().cloned().collect();
        }
        let mut members = BTreeSet::new();
        let mut stack = vec![group.to_string()];
        while let Some(name) = stack.pop() {
            if let Some(g) = self.groups.get(&name) {
                members.extend(g.hosts.iter().cloned());
                stack.extend(g.children.iter().cloned());
            }
        }
        self.hosts
            .keys()
            .filter(|h| members.contains(*h))
            .cloned()
            .collect()
    }

    /// The host's effective vars, with Ansible's precedence.
    pub fn vars(&self, host: &str) -> Vars {
        // Depth of every group that contains the host, measured from `all` (depth 0).
        let mut depths: BTreeMap<String, usize> = BTreeMap::new();
        let mut frontier = vec![("all".to_string(), 0usize)];
        while let Some((name, depth)) = frontier.pop() {
            let Some(group) = self.groups.get(&name) else {
                continue;
            };
            if !self.hosts_of_group(&name).iter().any(|h| h == host) {
                continue;
            }
            let entry = depths.entry(name.clone()).or_insert(depth);
            *entry = (*entry).max(depth);
            for child in &group.children {
                frontier.push((child.clone(), depth + 1));
            }
        }
        let mut ordered: Vec<(usize, String)> = depths.into_iter().map(|(n, d)| (d, n)).collect();
        ordered.sort();
        let mut vars = Vars::new();
        for (_, name) in ordered {
            if let Some(group) = self.groups.get(&name) {
                vars.extend(group.vars.clone());
            }
        }
        if let Some(own) = self.hosts.get(host) {
            vars.extend(own.clone());
        }
        vars
    }

    /// Where to dial `host`: `ferry_host`/`ansible_host` (default the name) and
    /// `ferry_port`/`ansible_port` (default the agent port).
    pub fn target(&self, host: &str) -> Result<Target, String> {
        let vars = self.vars(host);
        let pick = |keys: [&str; 2]| keys.iter().find_map(|k| vars.get(*k).cloned());
        let address = match pick(["ferry_host", "ansible_host"]) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(other) if !other.is_null() => other.to_string(),
            _ => host.to_string(),
        };
        let port = match pick(["ferry_port", "ansible_port"]) {
            None | Some(Value::Null) => ferry_proto::DEFAULT_AGENT_PORT,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("host {host}: port {n} is not a TCP port"))?,
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| format!("host {host}: port {s:?} is not a TCP port"))?,
            Some(other) => return Err(format!("host {host}: port {other} is not a TCP port")),
        };
        let agent_name = match vars.get("ferry_agent_name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) => host.to_string(),
            Some(other) => {
                return Err(format!(
                    "host {host}: ferry_agent_name {other} is not a host name"
                ));
            }
        };
        Ok(Target {
            name: host.to_string(),
            address,
            port,
            agent_name,
        })
    }
}

/// Turns an INI-style scalar into a typed value, as Ansible does for host vars.
pub(crate) fn scalar(text: &str) -> Value {
    let t = text.trim();
    if let Some(inner) = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
    {
        return Value::String(inner.to_string());
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::from(i);
    }
    match t {
        "true" | "True" => Value::Bool(true),
        "false" | "False" => Value::Bool(false),
        _ => Value::String(t.to_string()),
    }
}

#[cfg(test)]
mod tests;
