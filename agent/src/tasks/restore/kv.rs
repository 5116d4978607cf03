//! The KV side: flushing and seeding awaiting-reconnect keys inside the KV container, pipelined
//! through `redis-cli --pipe` in batches, the password sent as the first command rather than on a
//! command line.

use std::path::Path;

use crate::host::Host;
use crate::host::podman::Secret;

fn packed(args: &[&str]) -> Vec<u8> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.get_packed_command()
}

/// Keys per MSET: the seed runs inside the restore's window, and one command per key would make it
/// grow with the fleet (472 k SETNX took 2.3 s; a few hundred MSETs take a fraction of that).
const PER_MSET: usize = 1000;

/// FLUSHALL, then every key in `keys_file` (one per line) set to `true` (upstream's SETNX: after the
/// flush no key exists, so MSET in batches sets the same keys to the same value).
pub async fn seed(host: &Host, password: &Secret, keys_file: &Path) -> Result<usize, String> {
    let keys =
        std::fs::read_to_string(keys_file).map_err(|e| format!("{}: {e}", keys_file.display()))?;
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    let mut input = packed(&["AUTH", password.expose()]);
    input.extend(packed(&["FLUSHALL"]));
    input.extend(msets(&keys));
    pipe(host, &input).await?;
    Ok(keys.len())
}

/// Sets `keys` to `true` without a flush (after a KV restart lost them).
pub async fn set(host: &Host, password: &Secret, keys: &[&str]) -> Result<(), String> {
    let mut input = packed(&["AUTH", password.expose()]);
    input.extend(msets(keys));
    pipe(host, &input).await
}

fn msets(keys: &[&str]) -> Vec<u8> {
    let mut input = Vec::new();
    for batch in keys.chunks(PER_MSET) {
        let mut cmd = redis::cmd("MSET");
        for key in batch {
            cmd.arg(*key).arg("true");
        }
        input.extend(cmd.get_packed_command());
    }
    input
}

/// Sends packed commands through `redis-cli --pipe` inside the KV container.
async fn pipe(host: &Host, input: &[u8]) -> Result<(), String> {
    let out = host
        .podman()
        .exec("flightctl-kv", &["redis-cli", "--pipe"], input)
        .await
        .map_err(|e| e.to_string())?;
    if !out.contains("errors: 0,") {
        return Err(format!("redis-cli --pipe reported errors: {}", out.trim()));
    }
    Ok(())
}

/// Deletes the keys `seed` set (rollback): the previous database's devices are not awaiting a
/// reconnect. Returns how many keys were deleted.
pub async fn unseed(host: &Host, password: &Secret, keys_file: &Path) -> Result<usize, String> {
    let keys =
        std::fs::read_to_string(keys_file).map_err(|e| format!("{}: {e}", keys_file.display()))?;
    let mut input = packed(&["AUTH", password.expose()]);
    let mut count = 0;
    for key in keys.lines().filter(|k| !k.is_empty()) {
        input.extend(packed(&["DEL", key]));
        count += 1;
    }
    pipe(host, &input).await?;
    Ok(count)
}

/// The KV's password (the podman secret the Flight Control units use).
pub async fn password(host: &Host) -> Result<Secret, String> {
    host.podman()
        .secret("flightctl-kv-password")
        .await
        .map_err(|e| e.to_string())
}

/// `redis-cli` inside the KV container fed `script` (which authenticates first); its replies.
async fn redis_cli(host: &Host, script: &str) -> Result<String, String> {
    host.podman()
        .exec(
            "flightctl-kv",
            &["redis-cli", "--no-auth-warning"],
            script.as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())
}

/// How many of `keys` the KV holds (EXISTS in batches, each key counted once).
pub async fn existing(host: &Host, password: &Secret, keys: &[&str]) -> Result<usize, String> {
    let mut script = format!("AUTH {}\n", password.expose());
    for batch in keys.chunks(PER_MSET) {
        script.push_str("EXISTS ");
        script.push_str(&batch.join(" "));
        script.push('\n');
    }
    let out = redis_cli(host, &script).await?;
    // The AUTH reply is `OK`; each EXISTS answers a count.
    let counts: Vec<usize> = out
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("(integer) ").parse().ok())
        .collect();
    if counts.len() != keys.chunks(PER_MSET).count() {
        return Err(format!("unexpected redis-cli output: {}", out.trim()));
    }
    Ok(counts.iter().sum())
}

/// How many awaiting-reconnect keys the KV holds.
pub async fn count(host: &Host, password: &Secret) -> Result<usize, String> {
    let script = format!(
        "AUTH {}\nEVAL \"return #redis.call('KEYS', ARGV[1])\" 0 v1/*/device/*/awaiting-reconnect\n",
        password.expose()
    );
    let out = redis_cli(host, &script).await?;
    out.lines()
        .last()
        .and_then(|l| l.trim().trim_start_matches("(integer) ").parse().ok())
        .ok_or_else(|| format!("unexpected redis-cli output: {}", out.trim()))
}

/// `seed-kv`: the KV flushed and the prepared devices' keys set.
pub(super) async fn seed_step(
    host: &crate::host::Host,
    dir: &std::path::Path,
) -> Result<super::StepOutcome, String> {
    if !dir.join("kv-keys.txt").is_file() {
        return Ok(super::summary("no devices were prepared: nothing to seed"));
    }
    let password = password(host).await?;
    let n = seed(host, &password, &dir.join("kv-keys.txt")).await?;
    Ok(super::summary(&format!(
        "KV flushed and {n} awaiting-reconnect keys seeded through flightctl-kv"
    )))
}
