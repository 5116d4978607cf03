//! Publishing the DB port on the host's loopback address, through a `PublishPort=` drop-in next to the
//! unit's quadlet, for the shortest time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::Host;

const DROPIN: &str = "10-ferry-publish-port.conf";

/// Where the drop-in goes: next to flightctl-db's quadlet. The journal records it before it exists.
pub async fn dropin_path(host: &Host) -> Result<PathBuf, String> {
    let source = host
        .systemd()
        .source_path("flightctl-db.service")
        .await
        .map_err(|e| e.to_string())?;
    if source.is_empty() {
        return Err("flightctl-db.service has no SourcePath: not a quadlet unit".into());
    }
    Ok(host.path(format!("{source}.d")).join(DROPIN))
}

/// Writes the drop-in `dropin`, reloads and restarts flightctl-db, and waits until the port answers.
pub async fn publish(host: &Host, local_address: &str, dropin: &Path) -> Result<(), String> {
    if let Some(dir) = dropin.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(dropin, format!("# Written by ferry during a restore; removed when it ends.\n[Container]\nPublishPort={local_address}:5432:5432\n"))
        .map_err(|e| format!("{}: {e}", dropin.display()))?;
    host.systemd()
        .daemon_reload()
        .await
        .map_err(|e| e.to_string())?;
    host.systemd()
        .control("restart", &["flightctl-db.service"])
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect((local_address, 5432))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!(
                "flightctl-db did not answer on {local_address}:5432 after the restart"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Removes ferry's drop-ins, reloads, and restarts the data services so nothing stays published.
pub async fn unpublish(host: &Host, dropins: &[PathBuf]) -> Result<(), String> {
    for dropin in dropins {
        match std::fs::remove_file(dropin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dropin.display())),
        }
        if let Some(dir) = dropin.parent() {
            let _ = std::fs::remove_dir(dir); // only if empty
        }
    }
    host.systemd()
        .daemon_reload()
        .await
        .map_err(|e| e.to_string())?;
    host.systemd()
        .control("restart", &["flightctl-db.service", "flightctl-kv.service"])
        .await
        .map_err(|e| e.to_string())
}
