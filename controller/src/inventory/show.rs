//! What `ansible-inventory` prints, from ferry's reading of the inventory: `--list` as JSON, `--graph`
//! as a tree, `--host` as the host's effective vars.

use serde_json::{Map, Value, json};

use super::Inventory;

/// `ansible-inventory --list`: every group with its hosts and children (empty ones left out, `all`
/// with its children only), and `_meta.hostvars` with each host's effective vars.
pub fn list_json(inventory: &Inventory) -> Value {
    let mut doc = Map::new();
    for (name, group) in &inventory.groups {
        let mut entry = Map::new();
        if name != "all" && !group.hosts.is_empty() {
            entry.insert("hosts".into(), json!(group.hosts));
        }
        if !group.children.is_empty() {
            entry.insert("children".into(), json!(group.children));
        }
        if !entry.is_empty() {
            doc.insert(name.clone(), Value::Object(entry));
        }
    }
    let mut hostvars = Map::new();
    for host in inventory.hosts_of_group("all") {
        let vars = inventory.vars(&host);
        if !vars.is_empty() {
            hostvars.insert(host, json!(vars));
        }
    }
    doc.insert("_meta".into(), json!({ "hostvars": hostvars }));
    Value::Object(doc)
}

/// `ansible-inventory --graph [GROUP]`: the tree under `group`, child groups before hosts.
pub fn graph(inventory: &Inventory, group: &str) -> Option<String> {
    inventory.groups.get(group)?;
    let mut lines = Vec::new();
    graph_group(inventory, group, 0, &mut lines);
    Some(lines.join("\n"))
}

fn graph_group(inventory: &Inventory, name: &str, depth: usize, lines: &mut Vec<String>) {
    lines.push(graph_line(&format!("@{name}:"), depth));
    let group = &inventory.groups[name];
    for child in &group.children {
        graph_group(inventory, child, depth + 1, lines);
    }
    if name != "all" {
        for host in &group.hosts {
            lines.push(graph_line(host, depth + 1));
        }
    }
}

fn graph_line(name: &str, depth: usize) -> String {
    if depth == 0 {
        name.to_string()
    } else {
        format!("{}--{name}", "  |".repeat(depth))
    }
}

/// `ansible-inventory --host NAME`: the host's effective vars.
pub fn host_vars_json(inventory: &Inventory, host: &str) -> Option<Value> {
    inventory
        .has_host(host)
        .then(|| json!(inventory.vars(host)))
}
