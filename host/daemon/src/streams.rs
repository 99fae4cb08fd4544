//! The streaming requests: events (`subscribe`) and relay records (`relay cat`), with
//! their history, gaps and follow mode.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use vesper_api::{ApiError, ErrorCode, Reply, Response, WireResponse};

use crate::daemon::{unknown_guest, Shared};
use crate::events::WRITE_TIMEOUT;

use crate::relay::RelayStore;

/// Socket send buffer of an event subscriber's connection.
pub(crate) const SUBSCRIBER_SNDBUF: usize = 4 << 10;

/// Streams events: history (all of it, or from `from_seq`), a `Gap` if part of the
/// asked-for history is gone, then, when following, each new event passing `filter`.
/// A follower that falls behind gets a `Gap` with the count it missed.
pub(crate) async fn subscribe(
    daemon: &Shared,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    filter: vesper_events::Filter,
    from_seq: Option<u64>,
    follow: bool,
) -> std::io::Result<()> {
    // A small send buffer: a subscriber that stops reading blocks its own writer (and
    // then lags, and gets a gap) after a few lines, not after the kernel buffered
    // hundreds of them for it.
    let _ = nix::sys::socket::setsockopt(
        &std::os::fd::AsFd::as_fd(w.as_ref()),
        nix::sys::socket::sockopt::SndBuf,
        &SUBSCRIBER_SNDBUF,
    );
    let (history, missed, mut rx) = if from_seq.is_none() && !follow {
        let (_, _, rx) = daemon.bus.subscribe(None, &filter);
        (daemon.bus.history(&filter), 0, rx)
    } else {
        daemon.bus.subscribe(from_seq, &filter)
    };
    if missed > 0 {
        send_line(w, Ok(Reply::Gap { missed })).await?;
    }
    let mut sent = 0u64;
    for e in history {
        send_line(w, Ok(Reply::Event(e))).await?;
        sent += 1;
    }
    if !follow {
        return send_line(w, Ok(Reply::End { records: sent })).await;
    }
    loop {
        match rx.recv().await {
            Ok(p) if filter.matches(&p.event) => write_line(w, &p.line).await?,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::info!(missed, "a slow event subscriber missed events");
                send_line(w, Ok(Reply::Gap { missed })).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Streams `guest`'s records of `module` (and `channel`): the history, then, when
/// following, each new record. A follower that reads too slowly gets a `Gap` with the
/// number of records it missed; the guest and other readers are never slowed.
pub(crate) async fn relay_cat(
    daemon: &Shared,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    guest: &str,
    module: &str,
    channel: Option<&str>,
    follow: bool,
) -> std::io::Result<()> {
    let store = match relay_store(daemon, guest) {
        Ok(s) => s,
        Err(e) => return send_line(w, Err(e)).await,
    };
    let taken = {
        let s = store.lock().expect("relay lock");
        if !follow && !s.knows(module, channel) {
            let known = s.names();
            let hint = if known.is_empty() {
                "the guest has opened no channel".to_string()
            } else {
                format!("channels: {}", known.join(", "))
            };
            let what = channel.map_or(module.to_string(), |c| format!("{module}/{c}"));
            Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("{guest}: no relay channel {what}; {hint}"),
            ))
        } else {
            Ok(s.snapshot(module, channel))
        }
    };
    let (history, mut rx) = match taken {
        Ok(t) => t,
        Err(e) => return send_line(w, Err(e)).await,
    };
    let mut sent = 0u64;
    for r in history {
        send_line(w, Ok(Reply::Record((*r).clone()))).await?;
        sent += 1;
    }
    if !follow {
        return send_line(w, Ok(Reply::End { records: sent })).await;
    }
    loop {
        match rx.recv().await {
            Ok(r) if r.module == module && channel.is_none_or(|c| r.channel == c) => {
                send_line(w, Ok(Reply::Record((*r).clone()))).await?;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                send_line(w, Ok(Reply::Gap { missed })).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

pub(crate) fn relay_store(
    daemon: &Shared,
    guest: &str,
) -> Result<Arc<Mutex<RelayStore>>, ApiError> {
    let guests = daemon.guests.lock().expect("guests lock");
    let g = guests
        .get(guest)
        .ok_or_else(|| unknown_guest(&guests, guest))?;
    Ok(g.relay.clone())
}

/// Writes one reply line; a client that does not take it within `WRITE_TIMEOUT` is
/// dropped (it never holds anything up but its own connection).
pub(crate) async fn send_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    r: Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_string(&WireResponse::from(r)).map_err(std::io::Error::other)?;
    out.push('\n');
    write_line(w, &out).await
}

/// Writes one encoded line with the `WRITE_TIMEOUT` bound.
pub(crate) async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    line: &str,
) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(line.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client not reading",
        )),
    }
}
