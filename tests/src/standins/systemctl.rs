//! The `systemctl` stand-in: start / stop / restart / is-active / status / show / daemon-reload, with
//! systemd's output and exit codes, including for units the host does not have.

use super::Reply;
use super::services;
use crate::layout::{Layout, quadlet_source};
use crate::state::{HostLock, Spec, Units};

const TARGET: &str = "flightctl.target";

/// Runs one `systemctl` invocation against the simulated host.
pub fn run(layout: &Layout, args: &[String]) -> Reply {
    crate::state::log_call(layout, "systemctl", args);
    if let Some(message) = crate::state::fault(layout, "systemctl", args) {
        match message
            .strip_prefix("sleep:")
            .and_then(|s| s.parse::<u64>().ok())
        {
            // A slow call: wait, then behave normally.
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs)),
            None => return Reply::fail(1, format!("{message}\n")),
        }
    }
    let _lock = match HostLock::acquire(layout) {
        Ok(lock) => lock,
        Err(e) => return Reply::fail(1, format!("simhost lock: {e}\n")),
    };
    let (spec, mut units) = match (Spec::load(layout), Units::load(layout)) {
        (Ok(spec), Ok(units)) => (spec, units),
        (Err(e), _) | (_, Err(e)) => return Reply::fail(1, format!("simhost state: {e}\n")),
    };
    let mut props: Vec<String> = Vec::new();
    let mut value_only = false;
    let mut words: Vec<String> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(p) = arg.strip_prefix("--property=") {
            props.extend(p.split(',').map(str::to_string));
        } else if arg == "-p" || arg == "--property" {
            if let Some(p) = iter.next() {
                props.extend(p.split(',').map(str::to_string));
            }
        } else if arg == "--value" {
            value_only = true;
        } else if arg.starts_with('-') {
            // --no-pager, --quiet, --no-block: nothing to model.
        } else {
            words.push(arg.clone());
        }
    }
    let Some((verb, names)) = words.split_first() else {
        return Reply::fail(1, "Too few arguments.\n");
    };
    let names: Vec<String> = names.iter().map(|n| unit_name(n)).collect();
    let reply = match verb.as_str() {
        "start" | "stop" | "restart" | "try-restart" => {
            change(layout, &spec, &mut units, verb, &names)
        }
        "is-active" => is_active(layout, &spec, &units, &names),
        "status" => status(layout, &spec, &units, &names),
        "show" => show(layout, &spec, &units, &names, &props, value_only),
        "daemon-reload" => daemon_reload(layout, &spec, &mut units),
        other => Reply::fail(1, format!("Unknown command verb '{other}'.\n")),
    };
    if let Err(e) = units.save(layout) {
        return Reply::fail(1, format!("simhost state: {e}\n"));
    }
    reply
}

fn unit_name(name: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

fn loaded(spec: &Spec, unit: &str) -> bool {
    unit == TARGET || spec.has_unit(unit)
}

/// systemd's ActiveState of a unit.
pub fn active_state(layout: &Layout, spec: &Spec, units: &Units, unit: &str) -> &'static str {
    let wanted = units.is_active(unit);
    // A light host has no processes behind its units: their state is what systemctl was told.
    if services::is_process_backed(unit) && !spec.light {
        match (wanted, services::running(layout, unit)) {
            (true, true) => "active",
            (true, false) => "failed",
            (false, _) => "inactive",
        }
    } else if wanted {
        "active"
    } else {
        "inactive"
    }
}

fn change(layout: &Layout, spec: &Spec, units: &mut Units, verb: &str, names: &[String]) -> Reply {
    let mut reply = Reply::default();
    for name in names {
        if !loaded(spec, name) {
            let (what, why) = match verb {
                "stop" => ("stop", "not loaded"),
                other => (other, "not found"),
            };
            reply
                .stderr
                .push_str(&format!("Failed to {what} {name}: Unit {name} {why}.\n"));
            reply.code = 5;
            continue;
        }
        // The target pulls in every unit of the host; all of them are PartOf it.
        let members: Vec<String> = if name == TARGET {
            let mut all = spec.units.clone();
            if verb == "stop" {
                all.reverse();
            }
            all
        } else {
            vec![name.clone()]
        };
        for unit in members
            .iter()
            .chain(std::iter::once(name).filter(|n| *n == TARGET))
        {
            if let Err(e) = apply(layout, spec, units, verb, unit) {
                reply.stderr.push_str(&format!(
                    "Job for {unit} failed because the control process exited with error code.\n{e}\n"
                ));
                reply.code = 1;
            }
        }
    }
    reply
}

fn apply(
    layout: &Layout,
    spec: &Spec,
    units: &mut Units,
    verb: &str,
    unit: &str,
) -> Result<(), String> {
    match verb {
        "stop" => {
            services::stop(layout, spec, unit)?;
            units.active.insert(unit.into(), false);
        }
        "start" => {
            services::start(layout, spec, units, unit)?;
            units.active.insert(unit.into(), true);
        }
        "try-restart" if !units.is_active(unit) => {}
        _ => {
            services::stop(layout, spec, unit)?;
            units.active.insert(unit.into(), false);
            services::start(layout, spec, units, unit)?;
            units.active.insert(unit.into(), true);
        }
    }
    Ok(())
}

fn is_active(layout: &Layout, spec: &Spec, units: &Units, names: &[String]) -> Reply {
    let mut reply = Reply::default();
    for name in names {
        let state = if loaded(spec, name) {
            active_state(layout, spec, units, name)
        } else {
            "inactive"
        };
        reply.stdout.push_str(state);
        reply.stdout.push('\n');
        if state != "active" {
            reply.code = 3;
        }
    }
    reply
}

fn status(layout: &Layout, spec: &Spec, units: &Units, names: &[String]) -> Reply {
    let mut reply = Reply::default();
    for name in names {
        if !loaded(spec, name) {
            reply
                .stderr
                .push_str(&format!("Unit {name} could not be found.\n"));
            reply.code = 4;
            continue;
        }
        let state = active_state(layout, spec, units, name);
        let sub = if state == "active" { "running" } else { "dead" };
        reply.stdout.push_str(&format!(
            "● {name} - {base}\n     Loaded: loaded ({source}; generated)\n     Active: {state} ({sub})\n\n",
            base = name.trim_end_matches(".service"),
            source = quadlet_source(name),
        ));
        if state != "active" && reply.code == 0 {
            reply.code = 3;
        }
    }
    reply
}

fn show(
    layout: &Layout,
    spec: &Spec,
    units: &Units,
    names: &[String],
    props: &[String],
    value_only: bool,
) -> Reply {
    const ALL: [&str; 6] = [
        "Id",
        "Description",
        "LoadState",
        "ActiveState",
        "SubState",
        "SourcePath",
    ];
    let wanted: Vec<&str> = if props.is_empty() {
        ALL.to_vec()
    } else {
        props.iter().map(String::as_str).collect()
    };
    let mut blocks = Vec::new();
    for name in names {
        let present = loaded(spec, name);
        let state = if present {
            active_state(layout, spec, units, name)
        } else {
            "inactive"
        };
        let mut lines = Vec::new();
        for prop in &wanted {
            let value = match *prop {
                "Id" | "Names" => name.clone(),
                "Description" => name.trim_end_matches(".service").to_string(),
                "LoadState" => if present { "loaded" } else { "not-found" }.to_string(),
                "ActiveState" => state.to_string(),
                "SubState" => if state == "active" { "running" } else { "dead" }.to_string(),
                "SourcePath" if present && name != TARGET => quadlet_source(name),
                _ => String::new(),
            };
            lines.push(if value_only {
                value
            } else {
                format!("{prop}={value}")
            });
        }
        blocks.push(lines.join("\n"));
    }
    Reply::ok(format!("{}\n", blocks.join("\n\n")))
}

/// Regenerates units from the quadlets and their drop-ins, as the quadlet generator does at reload.
fn daemon_reload(layout: &Layout, spec: &Spec, units: &mut Units) -> Reply {
    units.published.clear();
    for unit in &spec.units {
        let quadlet = layout.quadlet(unit);
        let Ok(main) = std::fs::read_to_string(&quadlet) else {
            continue;
        };
        let mut texts = vec![main];
        let dropin_dir = quadlet.with_file_name(format!(
            "{}.d",
            quadlet
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        if let Ok(entries) = std::fs::read_dir(&dropin_dir) {
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect();
            paths.sort();
            texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
        }
        let ports: Vec<String> = texts
            .iter()
            .flat_map(|t| t.lines())
            .filter_map(|l| l.trim().strip_prefix("PublishPort="))
            .map(str::to_string)
            .collect();
        if !ports.is_empty() {
            units.published.insert(unit.clone(), ports);
        }
    }
    Reply::default()
}
