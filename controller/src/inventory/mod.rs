//! Ansible inventories as Ansible reads them: INI and YAML files, inventory directories, several
//! sources at once, `group_vars/` and `host_vars/` next to each source, host ranges.
//!
//! The model is Ansible's: hosts and groups in the order they were first seen, `all` and
//! `ungrouped` always present, a group's hosts listed before its descendants' (level by level).
//! Variable precedence follows Ansible's defaults: `all` < other groups (shallow before deep, then
//! by name) < `group_vars/all` < `group_vars/<group>` < the host's inventory vars < `host_vars/<host>`.
//! Parsing turns sources into an [`Inventory`]; after that it is trusted.

mod ini;
mod range;
mod show;
mod sources;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_json::Value;

pub use range::expand as expand_range;
pub use show::{graph, host_vars_json, list_json};

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

impl InventoryError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        InventoryError {
            file: file.display().to_string(),
            line: None,
            message: message.into(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Group {
    pub hosts: Vec<String>,
    pub children: Vec<String>,
    pub parents: Vec<String>,
    /// Vars from inventory files.
    pub vars: Vars,
    /// Vars from `group_vars/` files.
    pub file_vars: Vars,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Host {
    /// Vars from inventory files.
    pub vars: Vars,
    /// Vars from `host_vars/` files.
    pub file_vars: Vars,
}

/// A parsed inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Hosts in the order they were first seen.
    pub(crate) hosts: IndexMap<String, Host>,
    /// Groups in the order they were first seen; `all` and `ungrouped` first.
    pub(crate) groups: IndexMap<String, Group>,
}

impl Default for Inventory {
    fn default() -> Self {
        let mut inventory = Inventory {
            hosts: IndexMap::new(),
            groups: IndexMap::new(),
        };
        inventory.add_child("all", "ungrouped");
        inventory
    }
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
    /// Reads inventory sources in order (files or directories, as `-i` is repeated), with the
    /// `group_vars/` and `host_vars/` next to each.
    pub fn load_all(paths: &[PathBuf]) -> Result<Self, InventoryError> {
        let mut inventory = Inventory::default();
        for path in paths {
            sources::read(&mut inventory, path)?;
        }
        inventory.reconcile()?;
        for path in paths {
            sources::read_vars_dirs(&mut inventory, path)?;
        }
        Ok(inventory)
    }

    /// Reads one inventory source.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        Self::load_all(&[path.to_path_buf()])
    }

    /// Parses inventory text; `file` is used in error messages.
    pub fn parse(file: &str, text: &str, is_yaml: bool) -> Result<Self, InventoryError> {
        let mut inventory = Inventory::default();
        if is_yaml {
            yaml::parse(&mut inventory, file, text)?;
        } else {
            ini::parse(&mut inventory, file, text)?;
        }
        inventory.reconcile()?;
        Ok(inventory)
    }

    /// Adds `name` (if new) to `group` (if given, and if not there yet) with its inventory vars.
    pub(crate) fn add_host(&mut self, name: &str, group: Option<&str>, vars: Vars) {
        self.hosts
            .entry(name.to_string())
            .or_default()
            .vars
            .extend(vars);
        if let Some(group) = group {
            let g = self.group_mut(group);
            if !g.hosts.iter().any(|h| h == name) {
                g.hosts.push(name.to_string());
            }
        }
    }

    pub(crate) fn group_mut(&mut self, name: &str) -> &mut Group {
        self.groups.entry(name.to_string()).or_default()
    }

    pub(crate) fn add_child(&mut self, parent: &str, child: &str) {
        self.group_mut(child);
        let p = self.group_mut(parent);
        if !p.children.iter().any(|c| c == child) {
            p.children.push(child.to_string());
        }
        let c = self.group_mut(child);
        if !c.parents.iter().any(|p| p == parent) {
            c.parents.push(parent.to_string());
        }
    }

    /// As Ansible's reconciliation: groups without a parent become children of `all`, hosts in no
    /// group are `ungrouped`, hosts in a group leave `ungrouped`; cycles are refused.
    fn reconcile(&mut self) -> Result<(), InventoryError> {
        let orphans: Vec<String> = self
            .groups
            .iter()
            .filter(|(name, g)| name.as_str() != "all" && g.parents.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for group in orphans {
            self.add_child("all", &group);
        }
        let in_groups: BTreeSet<&str> = self
            .groups
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "all" | "ungrouped"))
            .flat_map(|(_, g)| g.hosts.iter().map(String::as_str))
            .collect();
        let ungrouped: Vec<String> = self
            .hosts
            .keys()
            .filter(|h| !in_groups.contains(h.as_str()))
            .cloned()
            .collect();
        let g = self.group_mut("ungrouped");
        g.hosts.retain(|h| ungrouped.contains(h));
        for h in ungrouped {
            if !g.hosts.contains(&h) {
                g.hosts.push(h);
            }
        }
        for name in self.groups.keys() {
            let mut path = Vec::new();
            self.check_cycle(name, &mut path)
                .map_err(|cycle| InventoryError {
                    file: "inventory".into(),
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
                self.add_host(&name, Some("ungrouped"), Vars::new());
            }
        }
    }

    /// Host names in the order they were first seen.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// Group names in the order they were first seen.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    pub fn has_group(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    pub fn has_host(&self, name: &str) -> bool {
        self.hosts.contains_key(name)
    }

    /// The group and its descendants, level by level, each level in the order its parents list
    /// it (Ansible's order).
    fn descendants(&self, group: &str) -> Vec<&str> {
        let Some((_, name, _)) = self.groups.get_full(group) else {
            return Vec::new();
        };
        let mut ordered: Vec<&str> = vec![name.as_str()];
        let mut seen: BTreeSet<&str> = BTreeSet::from([name.as_str()]);
        let mut level: Vec<&str> = vec![name.as_str()];
        while !level.is_empty() {
            let mut next = Vec::new();
            for parent in level {
                for child in &self.groups[parent].children {
                    if seen.insert(child.as_str()) {
                        ordered.push(child.as_str());
                        next.push(child.as_str());
                    }
                }
            }
            level = next;
        }
        ordered
    }

    /// Every host in `group` and its descendants: the group's own first, then level by level.
    pub fn hosts_of_group(&self, group: &str) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        let mut seen = BTreeSet::new();
        for g in self.descendants(group) {
            for h in &self.groups[g].hosts {
                if seen.insert(h.as_str()) {
                    hosts.push(h.clone());
                }
            }
        }
        hosts
    }

    /// The groups `host` belongs to, directly or through a child group, `all` included.
    pub fn groups_of(&self, host: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut stack: Vec<&str> = self
            .groups
            .iter()
            .filter(|(_, g)| g.hosts.iter().any(|h| h == host))
            .map(|(n, _)| n.as_str())
            .collect();
        while let Some(g) = stack.pop() {
            if found.insert(g.to_string()) {
                stack.extend(self.groups[g].parents.iter().map(String::as_str));
            }
        }
        found.insert("all".into());
        found
    }

    /// A group's depth: its longest path from `all`.
    fn depth(&self, group: &str) -> usize {
        self.groups
            .get(group)
            .map(|g| {
                g.parents
                    .iter()
                    .map(|p| self.depth(p) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// The host's effective vars, with Ansible's default precedence.
    pub fn vars(&self, host: &str) -> Vars {
        let mut groups: Vec<(usize, String)> = self
            .groups_of(host)
            .into_iter()
            .filter(|g| g != "all")
            .map(|g| (self.depth(&g), g))
            .collect();
        groups.sort();
        let all = &self.groups["all"];
        let mut vars = all.vars.clone();
        for (_, g) in &groups {
            vars.extend(self.groups[g.as_str()].vars.clone());
        }
        vars.extend(all.file_vars.clone());
        for (_, g) in &groups {
            vars.extend(self.groups[g.as_str()].file_vars.clone());
        }
        if let Some(own) = self.hosts.get(host) {
            vars.extend(own.vars.clone());
            vars.extend(own.file_vars.clone());
        }
        vars
    }

    /// Where to dial `host`: `ferry_host`, else `ansible_host` (default the name), and `ferry_port`
    /// (default the agent port). `ansible_port` is SSH's and is ignored.
    pub fn target(&self, host: &str) -> Result<Target, String> {
        let vars = self.vars(host);
        let address = match vars.get("ferry_host").or_else(|| vars.get("ansible_host")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Null) | None => host.to_string(),
            Some(Value::String(_)) => {
                return Err(format!("host {host}: ferry_host or ansible_host is empty"));
            }
            Some(other) => other.to_string(),
        };
        let port = match vars.get("ferry_port") {
            None | Some(Value::Null) => ferry_proto::DEFAULT_AGENT_PORT,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("host {host}: ferry_port {n} is not a TCP port"))?,
            Some(Value::String(s)) => s
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("host {host}: ferry_port {s:?} is not a TCP port"))?,
            Some(other) => {
                return Err(format!("host {host}: ferry_port {other} is not a TCP port"));
            }
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

/// Turns an INI value into a typed value, as Ansible's `ast.literal_eval` does: numbers (no leading
/// zeros), quoted strings, `True`/`False`/`None`, lists and dicts; anything else stays text.
pub(crate) fn literal(text: &str) -> Value {
    let t = text.trim();
    if let Some(inner) = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
    {
        return Value::String(inner.to_string());
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && let Ok(i) = t.parse::<i64>()
    {
        return Value::from(i);
    }
    if (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('{') && t.ends_with('}')) {
        // Python's list and dict literals read as YAML flow collections.
        if let Ok(v) = serde_norway::from_str::<Value>(t) {
            return v;
        }
    }
    if t.contains(['.', 'e', 'E'])
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
        && let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match t {
        "True" => Value::Bool(true),
        "False" => Value::Bool(false),
        "None" => Value::Null,
        _ => Value::String(t.to_string()),
    }
}

#[cfg(test)]
mod tests;
