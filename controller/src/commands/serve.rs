//! `ferry serve`: checks everything it needs before anything runs, then hands over to
//! [`crate::serve`].

use std::path::PathBuf;

use crate::cli::{GlobalArgs, ServeArgs};
use crate::report::exit;
use crate::serve::{Service, Settings};

pub async fn run(path: PathBuf, explicit: bool, global: &GlobalArgs, args: ServeArgs) -> i32 {
    // Fleet-command flags mean nothing to a service; taking them silently would surprise.
    let ignored = [
        ("--limit", global.limit.is_some()),
        ("--list-hosts", global.list_hosts),
        ("--serial", global.serial.is_some()),
        (
            "--max-fail-percentage",
            global.max_fail_percentage.is_some(),
        ),
        ("--forks", global.forks.is_some()),
        ("--timeout", global.timeout.is_some()),
    ];
    if let Some((flag, _)) = ignored.iter().find(|(_, set)| *set) {
        errln!(
            "ferry serve: {flag} does not apply to ferry serve; set hosts:, forks, serial and max_fail_percentage per schedule in the config (`ferry status --list-hosts` is not one either: try `ferry ping PATTERN --list-hosts`); nothing was started"
        );
        return crate::report::exit::ERROR;
    }
    let (settings, warnings) = match Settings::load(
        &path,
        explicit,
        &global.inventory,
        global.catalog.as_deref(),
    )
    .await
    {
        Ok(loaded) => loaded,
        Err(errors) => {
            for e in errors {
                errln!("ferry serve: {e}");
            }
            errln!("ferry serve: nothing was started");
            return exit::ERROR;
        }
    };
    for w in warnings {
        errln!("[WARNING]: {w}");
    }
    let catalog = match crate::ops::catalog(&settings.config).await {
        Ok(c) => c,
        Err(e) => {
            errln!(
                "ferry serve: {}: the catalog is unreachable: {e}; nothing was started (check catalog: and that the database is up)",
                settings.config.key_at("catalog")
            );
            return exit::ERROR;
        }
    };
    crate::proof::adopt(&catalog, &settings.store).await;
    let listen = settings.listen();
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            errln!(
                "ferry serve: {}: cannot listen on {listen}: {e}; nothing was started",
                settings.config.key_at("serve")
            );
            return exit::ERROR;
        }
    };
    // The host name: the same across restarts, so its metric series and catalog row carry on (a
    // second serve on one host needs its own --replica; a live name is refused).
    let replica = args.replica.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let service = Service::new(
        replica,
        path,
        explicit,
        global.inventory.clone(),
        global.catalog.clone(),
        settings,
        catalog,
    );
    service
        .run(listener, std::time::Duration::from_secs(args.grace))
        .await
}
