//! What both agents do the same way as systemd services (`Type=notify`):
//! readiness and status notifications, and watchdog pings.

use std::time::Duration;

pub use sd_notify::NotifyState;

/// Tells systemd about the service's state; without `NOTIFY_SOCKET` (not run by
/// systemd) this does nothing.
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval, as systemd
/// advises. The pings come from their own task: a publish of a large imageset
/// runs for hours inside one round of the loop, and must not be killed for it;
/// the watchdog catches a process whose runtime has stopped.
pub fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}
