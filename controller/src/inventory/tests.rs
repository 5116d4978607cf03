use serde_json::json;

use super::*;
use crate::pattern::{PatternError, select};

const INI: &str = r#"
# fleet
lonely ansible_host=10.0.0.9

[site_a]
cp[01:03].a.example.com ferry_port=7500

[site_b]
cp[a:b].b.example.com
db-b.example.com:7600 ansible_host=10.2.0.1 role="primary db"

[prod:children]
site_a
site_b

[all:vars]
tier=dev
ansible_port=7482

[prod:vars]
tier=prod

[site_b:vars]
tier=site-b
"#;

fn ini() -> Inventory {
    Inventory::parse("inv.ini", INI, false).expect("valid inventory")
}

#[test]
fn ini_ranges_groups_and_children() {
    let inv = ini();
    let hosts: Vec<&str> = inv.host_names().collect();
    assert_eq!(
        hosts,
        [
            "lonely",
            "cp01.a.example.com",
            "cp02.a.example.com",
            "cp03.a.example.com",
            "cpa.b.example.com",
            "cpb.b.example.com",
            "db-b.example.com"
        ]
    );
    assert_eq!(inv.hosts_of_group("prod").len(), 6);
    assert_eq!(inv.hosts_of_group("ungrouped"), ["lonely"]);
}

#[test]
fn vars_precedence_all_then_parent_then_child_then_host() {
    let inv = ini();
    let a = inv.vars("cp01.a.example.com");
    assert_eq!(a["tier"], json!("prod"), "prod (parent) overrides all");
    assert_eq!(a["ferry_port"], json!(7500));
    let b = inv.vars("db-b.example.com");
    assert_eq!(
        b["tier"],
        json!("site-b"),
        "site_b (child) overrides prod (parent)"
    );
    assert_eq!(b["role"], json!("primary db"));
    assert_eq!(inv.vars("lonely")["tier"], json!("dev"));
}

#[test]
fn targets_use_host_and_port_vars() {
    let inv = ini();
    let t = inv.target("db-b.example.com").unwrap();
    assert_eq!(
        (t.address.as_str(), t.port),
        ("10.2.0.1", 7482),
        "ansible_host is dialled; host:port sets ansible_port, which is SSH's and ignored"
    );
    assert_eq!(inv.vars("db-b.example.com")["ansible_port"], json!(7600));
    let t = inv.target("cp02.a.example.com").unwrap();
    assert_eq!(
        (t.address.as_str(), t.port),
        ("cp02.a.example.com", 7500),
        "ferry_port wins"
    );
    let t = inv.target("lonely").unwrap();
    assert_eq!((t.address.as_str(), t.port), ("10.0.0.9", 7482));
}

const YAML: &str = r#"
all:
  vars:
    tier: dev
  hosts:
    jump:
  children:
    prod:
      vars:
        tier: prod
      children:
        site_a:
          hosts:
            cp[01:02].a:
              ansible_host: 10.1.0.1
          vars:
            tier: a
        site_b:
          hosts:
            cp01.b:
              ferry_host: 10.2.0.1
              ferry_port: "7601"
              tier: host
    lab:
      hosts:
        cp01.b:
        lab1:
"#;

#[test]
fn yaml_nested_children_and_precedence() {
    let inv = Inventory::parse("inv.yaml", YAML, true).unwrap();
    assert_eq!(inv.hosts_of_group("prod"), ["cp01.a", "cp02.a", "cp01.b"]);
    assert_eq!(inv.hosts_of_group("lab"), ["cp01.b", "lab1"]);
    assert_eq!(inv.vars("cp01.a")["tier"], json!("a"));
    assert_eq!(inv.vars("cp01.b")["tier"], json!("host"));
    assert_eq!(inv.vars("lab1")["tier"], json!("dev"));
    assert_eq!(inv.vars("jump")["tier"], json!("dev"));
    let t = inv.target("cp01.b").unwrap();
    assert_eq!((t.address.as_str(), t.port), ("10.2.0.1", 7601));
}

#[test]
fn malformed_inventories_name_file_and_line() {
    let cases = [
        ("[prod\ncp01\n", 1, "closing ']'"),
        ("[prod]\ncp01\n[prod:weird]\n", 3, "unknown section type"),
        ("[prod:vars]\nno_equals_sign\n", 2, "not key=value"),
        ("[prod]\ncp[05:01]\n", 2, "runs backwards"),
        ("[prod]\ncp01 novalue\n", 2, "not key=value"),
        ("[prod]\ncp01 a=\"unterminated\n", 2, "unterminated quote"),
    ];
    for (text, line, needle) in cases {
        let err = Inventory::parse("bad.ini", text, false).unwrap_err();
        assert_eq!(err.line, Some(line), "{text:?}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("bad.ini:{line}: ")),
            "{message}"
        );
        assert!(message.contains(needle), "{message}");
    }
    let err = Inventory::parse("bad.yaml", "all:\n  hosts: [cp01\n", true).unwrap_err();
    assert!(err.line.is_some(), "{err}");
    let err = Inventory::parse("bad.yaml", "all:\n  hosts:\n    - cp01\n", true).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yaml: all.hosts must be a mapping"),
        "{err}"
    );
    let err = Inventory::parse("bad.yaml", "all:\n  hostz: {}\n", true).unwrap_err();
    assert!(err.to_string().contains("unknown key \"hostz\""), "{err}");
    let err =
        Inventory::parse("cycle.ini", "[a:children]\nb\n[b:children]\na\n", false).unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
}

#[test]
fn ranges_keep_padding_steps_and_letters() {
    assert_eq!(
        expand_range("web[08:10]").unwrap(),
        ["web08", "web09", "web10"]
    );
    assert_eq!(
        expand_range("web[1:5:2]").unwrap(),
        ["web1", "web3", "web5"]
    );
    assert_eq!(expand_range("db-[a:c]").unwrap(), ["db-a", "db-b", "db-c"]);
    assert_eq!(
        expand_range("r[1:2]-[a:b]").unwrap(),
        ["r1-a", "r1-b", "r2-a", "r2-b"]
    );
    assert!(expand_range("web[1:x]").is_err());
}

fn names(inv: &Inventory, pattern: &str) -> Vec<String> {
    select(inv, pattern, None)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .hosts
}

#[test]
fn every_pattern_form() {
    let inv = ini();
    assert_eq!(names(&inv, "all").len(), 7);
    assert_eq!(names(&inv, "*").len(), 7);
    assert_eq!(names(&inv, "lonely"), ["lonely"]);
    assert_eq!(names(&inv, "site_a").len(), 3);
    assert_eq!(
        names(&inv, "cp0*"),
        [
            "cp01.a.example.com",
            "cp02.a.example.com",
            "cp03.a.example.com"
        ]
    );
    assert_eq!(
        names(&inv, "*.b.example.com"),
        ["cpa.b.example.com", "cpb.b.example.com"]
    );
    assert_eq!(names(&inv, "site_a:lonely").len(), 4);
    assert_eq!(names(&inv, "site_a,lonely").len(), 4);
    assert_eq!(
        names(&inv, "prod:&site_b"),
        ["cpa.b.example.com", "cpb.b.example.com", "db-b.example.com"]
    );
    assert_eq!(
        names(&inv, "prod:!site_b"),
        [
            "cp01.a.example.com",
            "cp02.a.example.com",
            "cp03.a.example.com"
        ]
    );
    assert_eq!(names(&inv, "all:!prod"), ["lonely"]);
    assert_eq!(names(&inv, "!prod"), ["lonely"]);
    assert_eq!(
        names(&inv, "~cp0[12]\\..*"),
        ["cp01.a.example.com", "cp02.a.example.com"]
    );
    assert_eq!(names(&inv, "site_a[0]"), ["cp01.a.example.com"]);
    assert_eq!(names(&inv, "site_a[-1]"), ["cp03.a.example.com"]);
    assert_eq!(
        names(&inv, "site_a[0:1]"),
        ["cp01.a.example.com", "cp02.a.example.com"],
        "subscripts are inclusive, as in Ansible"
    );
    assert_eq!(names(&inv, "site_a[0:2]").len(), 3);
    assert_eq!(names(&inv, "site_a[7]"), Vec::<String>::new());
    assert_eq!(
        names(&inv, "site_a[1:]"),
        ["cp02.a.example.com", "cp03.a.example.com"]
    );
    assert_eq!(names(&inv, "prod:site_a[0]:!cpa*").len(), 5);
}

#[test]
fn limit_intersects_and_unknown_terms_are_errors() {
    let inv = ini();
    let limited = select(&inv, "prod", Some("site_b:lonely")).unwrap().hosts;
    assert_eq!(
        limited,
        ["cpa.b.example.com", "cpb.b.example.com", "db-b.example.com"]
    );
    // An exclusion or intersection that matches nothing is a warning that names it.
    let typo = select(&inv, "all:!site_bb", None).unwrap();
    assert_eq!(typo.hosts.len(), 7);
    assert!(
        typo.warnings[0].contains("\"site_bb\""),
        "{:?}",
        typo.warnings
    );
    let typo = select(&inv, "prod:&sitea", None).unwrap();
    assert!(typo.hosts.is_empty() && typo.warnings[0].contains("\"sitea\""));
    match select(&inv, "prod:typo", None) {
        Err(PatternError::NoMatch { term, .. }) => assert_eq!(term, "typo"),
        other => panic!("expected NoMatch, got {other:?}"),
    }
    assert!(select(&inv, "~(", None).is_err());
    assert!(select(&inv, "", None).is_err());
}

#[test]
fn a_subscript_of_nothing_says_how_it_was_read_and_limit_reads_a_file() {
    let inv = ini();
    let err = select(&inv, "cp0[12]", None).unwrap_err().to_string();
    assert!(
        err.contains("reads as a subscript of \"cp0\"") && err.contains("\"cp0[12]*\""),
        "{err}"
    );
    assert_eq!(names(&inv, "cp0[12]*").len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limit.txt");
    std::fs::write(&file, "lonely\n\ncp01.a.example.com\n").unwrap();
    let limit = format!("@{}", file.display());
    let limited = select(&inv, "all", Some(&limit)).unwrap().hosts;
    assert_eq!(limited, ["lonely", "cp01.a.example.com"]);
}
