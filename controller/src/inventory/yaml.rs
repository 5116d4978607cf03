//! Ansible's YAML inventory format: top-level groups with `hosts`, `vars` and `children`, read in
//! document order (it decides the order hosts and groups are first seen).

use serde_norway::{Mapping, Value};

use super::{Inventory, InventoryError, Vars, range};

pub(super) fn parse(inv: &mut Inventory, file: &str, text: &str) -> Result<(), InventoryError> {
    let top: Value = serde_norway::from_str(text).map_err(|e| InventoryError {
        file: file.to_string(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    let Some(top) = mapping(file, "the inventory", &top)? else {
        return Ok(());
    };
    for (name, group) in top {
        add_group(file, inv, &key(file, name)?, group)?;
    }
    Ok(())
}

/// A mapping key as text (YAML allows numbers and booleans as keys).
fn key(file: &str, key: &Value) -> Result<String, InventoryError> {
    match key {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(invalid(file, format!("{other:?} is not a name"))),
    }
}

fn vars(file: &str, what: &str, value: &Value) -> Result<Vars, InventoryError> {
    let mut vars = Vars::new();
    for (k, v) in mapping(file, what, value)?.into_iter().flatten() {
        let v = serde_json::to_value(v).map_err(|e| invalid(file, format!("{what}: {e}")))?;
        vars.insert(key(file, k)?, v);
    }
    Ok(vars)
}

fn invalid(file: &str, message: String) -> InventoryError {
    InventoryError {
        file: file.to_string(),
        line: None,
        message,
    }
}

/// A mapping, or nothing for `null`.
fn mapping<'a>(
    file: &str,
    what: &str,
    value: &'a Value,
) -> Result<Option<&'a Mapping>, InventoryError> {
    match value {
        Value::Null => Ok(None),
        Value::Mapping(map) => Ok(Some(map)),
        other => Err(invalid(
            file,
            format!(
                "{what} must be a mapping (name: value), not {}",
                match other {
                    Value::Sequence(_) => "a list",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "this",
                }
            ),
        )),
    }
}

fn add_group(
    file: &str,
    inv: &mut Inventory,
    name: &str,
    body: &Value,
) -> Result<(), InventoryError> {
    inv.group_mut(name);
    let Some(body) = mapping(file, &format!("group {name}"), body)? else {
        return Ok(());
    };
    for (k, value) in body {
        match key(file, k)?.as_str() {
            "vars" => {
                let vars = vars(file, &format!("{name}.vars"), value)?;
                inv.group_mut(name).vars.extend(vars);
            }
            "hosts" => {
                let Some(hosts) = mapping(file, &format!("{name}.hosts"), value)? else {
                    continue;
                };
                for (pattern, host_vars) in hosts {
                    let pattern = key(file, pattern)?;
                    let host_vars = vars(file, &format!("host {pattern}"), host_vars)?;
                    let names = range::expand(&pattern)
                        .map_err(|message| invalid(file, format!("group {name}: {message}")))?;
                    for host in names {
                        inv.add_host(&host, Some(name), host_vars.clone());
                    }
                }
            }
            "children" => {
                let Some(children) = mapping(file, &format!("{name}.children"), value)? else {
                    continue;
                };
                for (child, child_body) in children {
                    let child = key(file, child)?;
                    add_group(file, inv, &child, child_body)?;
                    inv.add_child(name, &child);
                }
            }
            other => {
                return Err(invalid(
                    file,
                    format!(
                        "group {name}: unknown key {other:?} (a group has hosts, vars and children)"
                    ),
                ));
            }
        }
    }
    Ok(())
}
