//! The relay channels a guest opened on its session (PROTOCOL.md "Relay channels"): each
//! checked when it opens (or resumes on a new host), read on every poll, and reported
//! closed with its final counters when the guest closes it, a read fails, or the guest
//! restarts. Knows nothing of the command flow; the session answers the guest's
//! requests with the status these methods return.

use std::sync::Arc;

use vesper_relay::{validate_open, ChannelSpec, ChannelStats, RelayError, RelayReader};
use vesper_shared_abi::{RelayCloseRequest, RelayOpenRequest};
use vesper_shmem::SharedRegion;

use super::completion::{closed, EEXIST, EINVAL, ENOENT, GUEST_RESTARTED};
use super::interface::SessionEvent;

/// The open channels, each with its reader.
#[derive(Debug, Default)]
pub(super) struct RelayChannels(Vec<(Arc<ChannelSpec>, RelayReader)>);

impl RelayChannels {
    /// Re-opens a channel an old host had accepted: `req` is checked again (its grants
    /// must still be live) and the reader resumes from the cursors in the consumer area.
    pub(super) fn resume(
        &mut self,
        region: &SharedRegion,
        req: &RelayOpenRequest,
        generation: u32,
    ) -> Result<ChannelSpec, RelayError> {
        let spec = validate_open(region, req, generation)?;
        if self.0.iter().any(|(s, _)| s.id == spec.id) {
            return Err(RelayError::DuplicateChannel { channel: spec.id });
        }
        self.0.push((
            Arc::new(spec.clone()),
            RelayReader::resume(spec.clone(), region),
        ));
        Ok(spec)
    }

    /// Counters of every open channel.
    pub(super) fn stats(&self, region: &SharedRegion) -> Vec<ChannelStats> {
        self.0.iter().map(|(_, r)| r.stats(region)).collect()
    }

    /// Reads every channel; a channel whose read fails is closed. `known` is the guest
    /// generation the session knows: a failure while the region says another one is a
    /// restart, not misbehaviour.
    pub(super) fn read(
        &mut self,
        region: &SharedRegion,
        known: Option<u32>,
        events: &mut Vec<SessionEvent>,
    ) {
        let mut failed = Vec::new();
        for (i, (spec, reader)) in self.0.iter_mut().enumerate() {
            let mut records = Vec::new();
            let result = reader.poll(region, &mut records);
            if !records.is_empty() {
                events.push(SessionEvent::Records {
                    channel: spec.clone(),
                    records,
                });
            }
            if let Err(e) = result {
                failed.push((i, e.to_string()));
            }
        }
        // A guest restarting bumps the generation before it frees its grants
        // (PROTOCOL.md, start-up): a channel failing then is a restart, not misbehaviour.
        let restarting =
            !failed.is_empty() && region.header().is_ok_and(|h| Some(h.generation) != known);
        for (i, error) in failed.into_iter().rev() {
            let error = if restarting {
                GUEST_RESTARTED.to_string()
            } else {
                error
            };
            let (spec, reader) = self.0.remove(i);
            events.push(closed(region, spec, &reader, Some(error)));
        }
    }

    /// The guest asks to open a channel: the status to answer with.
    pub(super) fn open(
        &mut self,
        region: &SharedRegion,
        req: &RelayOpenRequest,
        generation: u32,
        events: &mut Vec<SessionEvent>,
    ) -> i32 {
        match validate_open(region, req, generation) {
            Ok(spec) if self.0.iter().any(|(s, _)| s.id == spec.id) => {
                events.push(SessionEvent::RelayRefused(RelayError::DuplicateChannel {
                    channel: spec.id,
                }));
                -EEXIST
            }
            Ok(spec) => {
                events.push(SessionEvent::RelayOpened(spec.clone()));
                self.0
                    .push((Arc::new(spec.clone()), RelayReader::new(spec)));
                0
            }
            Err(e) => {
                events.push(SessionEvent::RelayRefused(e));
                -EINVAL
            }
        }
    }

    /// The guest closes a channel: what is left is read before the guest may revoke the
    /// grants. The status to answer with.
    pub(super) fn close(
        &mut self,
        region: &SharedRegion,
        req: &RelayCloseRequest,
        events: &mut Vec<SessionEvent>,
    ) -> i32 {
        let Some(i) = self.0.iter().position(|(s, _)| s.id == req.channel_id) else {
            return -ENOENT;
        };
        let (spec, mut reader) = self.0.remove(i);
        let mut records = Vec::new();
        let error = reader
            .poll(region, &mut records)
            .err()
            .map(|e| e.to_string());
        if !records.is_empty() {
            events.push(SessionEvent::Records {
                channel: spec.clone(),
                records,
            });
        }
        events.push(closed(region, spec, &reader, error));
        0
    }

    /// A new frontend start means new rings and new grants: every channel is stale.
    pub(super) fn close_all_restarted(
        &mut self,
        region: &SharedRegion,
        events: &mut Vec<SessionEvent>,
    ) {
        for (spec, reader) in std::mem::take(&mut self.0) {
            events.push(closed(
                region,
                spec,
                &reader,
                Some(GUEST_RESTARTED.to_string()),
            ));
        }
    }
}
