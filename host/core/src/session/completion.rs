//! Turning what a guest's completion says into what the caller sees: the `CommandError`
//! of a failed command (by stage and errno), the module list read out of granted
//! memory, the closing event of a relay channel; and the errno values the session
//! answers the guest with.

use std::mem::size_of;
use std::sync::Arc;

use vesper_relay::{ChannelSpec, RelayReader};
use vesper_shared_abi::*;
use vesper_shmem::grant::GrantNeed;
use vesper_shmem::{SharedRegion, ShmemError};
use vm_memory::ByteValued;

use super::interface::{Command, GuestModule, SessionEvent};
use crate::CommandError;

pub(super) const ECANCELED: i32 = 125;
pub(super) const EINVAL: i32 = 22;
/// The answer to a hello of a frontend version the host does not speak.
pub(super) const EPROTO: i32 = 71;
pub(super) const EEXIST: i32 = 17;
pub(super) const ENOENT: i32 = 2;
pub(super) const EAGAIN: i32 = 11;
pub(super) const EBUSY: i32 = 16;

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn stage_name(stage: u32) -> &'static str {
    match stage {
        STAGE_TRANSFER => "transfer",
        STAGE_PREPARE => "prepare",
        STAGE_INIT_MODULE => "init_module",
        STAGE_DELETE_MODULE => "delete_module",
        STAGE_LIST => "list",
        STAGE_COMMAND => "command",
        _ => "unknown",
    }
}

/// Why a load failed, from its completion.
pub(super) fn load_failure(name: &str, c: &CompletionRequest, log: String) -> CommandError {
    match (c.stage, -c.error) {
        (STAGE_INIT_MODULE, EEXIST) => CommandError::AlreadyLoaded {
            name: name.to_string(),
        },
        (STAGE_INIT_MODULE, _) => CommandError::InitFailed {
            name: name.to_string(),
            errno: c.error,
            log,
        },
        _ => CommandError::GuestFailed {
            op: "load",
            stage: stage_name(c.stage),
            errno: c.error,
            log,
        },
    }
}

pub(super) fn failure(cmd: &Command, c: &CompletionRequest, log: String) -> CommandError {
    match (cmd, c.stage, -c.error) {
        (Command::Load { name, .. }, _, _) => load_failure(name, c, log),
        (Command::Unload { name, .. }, STAGE_DELETE_MODULE, ENOENT) => {
            CommandError::NotLoaded { name: name.clone() }
        }
        (Command::Unload { name, .. }, STAGE_DELETE_MODULE, EAGAIN | EBUSY) => {
            CommandError::InUse { name: name.clone() }
        }
        _ => CommandError::GuestFailed {
            op: cmd.op_name(),
            stage: stage_name(c.stage),
            errno: c.error,
            log,
        },
    }
}

/// Why a channel of an earlier guest generation was closed.
pub(super) const GUEST_RESTARTED: &str = "guest restarted";

/// The event for a channel that is gone, with its final counters.
pub(super) fn closed(
    region: &SharedRegion,
    channel: Arc<ChannelSpec>,
    reader: &RelayReader,
    error: Option<String>,
) -> SessionEvent {
    SessionEvent::RelayClosed {
        channel,
        error,
        stats: reader.stats(region),
    }
}

pub(super) fn read_module_list(
    region: &SharedRegion,
    frames: Option<&dyn crate::GuestFrames>,
    c: &CompletionRequest,
    generation: u32,
) -> Result<Vec<GuestModule>, CommandError> {
    let entry_size = size_of::<ModuleEntry>() as u32;
    if c.data_len == 0 {
        return Ok(Vec::new());
    }
    if !c.data_len.is_multiple_of(entry_size) {
        return Err(CommandError::BadGuestData(format!(
            "module list of {} bytes is not a whole number of entries",
            c.data_len
        )));
    }
    let need = GrantNeed {
        access: GRANT_READ,
        owner: GRANT_OWNER_MODLIST,
        generation,
    };
    let bytes = match (region.grant(c.data_grant, need), frames) {
        (Ok(grant), _) => region
            .read_granted(&grant, c.data_len as u64)
            .map_err(CommandError::Misbehaving)?,
        // Granted from guest RAM, and this transport can read it there.
        (Err(ShmemError::GrantIsGuestFrames(_)), Some(frames)) => frames
            .read(region, c.data_grant, need, c.data_len as u64)
            .map_err(|why| CommandError::BadGuestData(format!("module list: {why}")))?,
        (Err(e), _) => return Err(CommandError::Misbehaving(e)),
    };
    Ok(bytes
        .chunks_exact(entry_size as usize)
        .map(|raw| {
            let mut e = ModuleEntry::default();
            e.as_mut_slice().copy_from_slice(raw);
            GuestModule {
                name: lossy(c_str_bytes(&e.name)),
                size: e.size,
                refcount: e.refcount,
                state: match e.state {
                    0 => "live",
                    1 => "coming",
                    2 => "going",
                    3 => "unformed",
                    _ => "unknown",
                }
                .to_string(),
                pushed: e.flags & MODULE_FLAG_PUSHED != 0,
                frontend: e.flags & MODULE_FLAG_FRONTEND != 0,
            }
        })
        .collect())
}
