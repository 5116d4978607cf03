//! Ansible's YAML inventory format: top-level groups with `hosts`, `vars` and `children`.

use indexmap::IndexMap;
use serde::Deserialize;

use super::{Inventory, InventoryError, Vars, range};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct YamlGroup {
    #[serde(default)]
    hosts: Option<IndexMap<String, Option<Vars>>>,
    #[serde(default)]
    vars: Option<Vars>,
    #[serde(default)]
    children: Option<IndexMap<String, Option<YamlGroup>>>,
}

pub(super) fn parse(file: &str, text: &str) -> Result<Inventory, InventoryError> {
    let top: Option<IndexMap<String, Option<YamlGroup>>> =
        serde_norway::from_str(text).map_err(|e| InventoryError {
            file: file.to_string(),
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
    let mut inv = Inventory::default();
    for (name, group) in top.unwrap_or_default() {
        add_group(file, &mut inv, &name, group.unwrap_or_default())?;
    }
    Ok(inv)
}

fn add_group(
    file: &str,
    inv: &mut Inventory,
    name: &str,
    group: YamlGroup,
) -> Result<(), InventoryError> {
    inv.group_mut(name)
        .vars
        .extend(group.vars.unwrap_or_default());
    for (pattern, vars) in group.hosts.unwrap_or_default() {
        let names = range::expand(&pattern).map_err(|message| InventoryError {
            file: file.to_string(),
            line: None,
            message: format!("group {name}: {message}"),
        })?;
        for host in names {
            inv.add_host(&host, vars.clone().unwrap_or_default());
            if name != "all" && name != "ungrouped" {
                let g = inv.group_mut(name);
                if !g.hosts.contains(&host) {
                    g.hosts.push(host);
                }
            }
        }
    }
    for (child, body) in group.children.unwrap_or_default() {
        let g = inv.group_mut(name);
        if !g.children.contains(&child) {
            g.children.push(child.clone());
        }
        add_group(file, inv, &child, body.unwrap_or_default())?;
    }
    Ok(())
}
