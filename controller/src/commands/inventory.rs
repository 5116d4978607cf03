//! `ferry inventory --list | --graph [GROUP] | --host NAME`: the inventory as ferry reads it.

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::report::exit;

/// Prints the inventory, one group's tree, or one host's vars.
pub fn run(config: &Config, global: &GlobalArgs, args: &crate::cli::InventoryArgs) -> i32 {
    let inventory = match crate::selection::load_inventory(config, global) {
        Ok(inventory) => inventory,
        Err(stop) => return stop.say(),
    };
    if let Some(group) = &args.graph {
        return match crate::inventory::graph(&inventory, group) {
            Some(tree) => {
                outln!("{tree}");
                exit::OK
            }
            None => {
                errln!(
                    "ferry inventory --graph: no group {group:?} in the inventory (`ferry inventory --list` shows them)"
                );
                exit::INVENTORY
            }
        };
    }
    let doc = match &args.host {
        Some(host) => match crate::inventory::host_vars_json(&inventory, host) {
            Some(mut vars) => {
                // Beside the vars `ansible-inventory --host` shows: what serve makes of them.
                let plans = effective_plans(config, &inventory, host);
                if plans.as_array().is_some_and(|p| !p.is_empty()) {
                    vars["ferry_effective"] = plans;
                }
                vars
            }
            None => {
                errln!(
                    "ferry inventory --host: no host {host:?} in the inventory (`ferry ping all --list-hosts` lists them)"
                );
                return exit::INVENTORY;
            }
        },
        None => crate::inventory::list_json(&inventory),
    };
    match serde_json::to_string_pretty(&doc) {
        Ok(text) => outln!("{text}"),
        Err(e) => {
            errln!("ferry inventory: {e}");
            return exit::ERROR;
        }
    }
    exit::OK
}

/// What each schedule that selects `host` means for it after its inventory vars: the cron, RPO and
/// retention serve applies, or why its vars do not parse.
fn effective_plans(
    config: &Config,
    inventory: &crate::inventory::Inventory,
    host: &str,
) -> serde_json::Value {
    let mut plans = Vec::new();
    for schedule in &config.schedules {
        let selected = crate::pattern::select(inventory, &schedule.hosts, None)
            .is_ok_and(|s| s.hosts.iter().any(|h| h == host));
        if !selected {
            continue;
        }
        plans.push(
            match crate::schedule::plans(schedule, inventory, &[host.to_string()]) {
                Ok(found) => match found.first() {
                    Some(p) => serde_json::json!({
                        "schedule": p.schedule,
                        "cron": p.cron.as_str(),
                        "rpo": humantime::format_duration(p.rpo).to_string(),
                        "retention": p.retention,
                        "drill": p.drill.as_ref().map(|(c, _)| c.as_str()),
                        "agent_name": p.agent_name,
                    }),
                    None => continue,
                },
                Err(errors) => serde_json::json!({"schedule": schedule.name, "errors": errors}),
            },
        );
    }
    serde_json::Value::Array(plans)
}
