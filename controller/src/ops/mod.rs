//! The operations layer: what `commands/` (the command line) and `serve/` (the service) both run.
//! An operation takes typed inputs, talks to agents, the store and the catalog, records what it
//! did through one [`Operation`], and returns outcomes; it prints nothing.

pub mod backup;
pub mod drill;
mod operation;
pub mod prune;
pub mod runs;

pub use operation::{Operation, Problem};

use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;

/// The catalog, connected and migrated, with this machine's runs that lost their controller
/// recorded as interrupted. Every operation's catalog comes from here.
pub async fn catalog(config: &Config) -> Result<Catalog, CatalogError> {
    let catalog = Catalog::connect(config).await?;
    runs::keep_in(config.state_dir.join("runs"));
    catalog.interrupted_runs().await;
    Ok(catalog)
}
