//! `insmod`: a module image checked on the host, then pushed into the guest.

use std::time::{Duration, Instant};

use vesper_api::{ApiError, ErrorCode, Reply, Response};
use vesper_core::{Command, Reply as GuestReply};

use crate::daemon::{run_command, unexpected, unknown_guest, Shared};

pub(crate) async fn insmod(
    daemon: &Shared,
    guest: &str,
    file_name: &str,
    image: Vec<u8>,
    params: Vec<String>,
    init_timeout: Option<Duration>,
) -> Response {
    let started = Instant::now();
    let vermagic = {
        let guests = daemon.guests.lock().expect("guests lock");
        let g = guests
            .get(guest)
            .ok_or_else(|| unknown_guest(&guests, guest))?;
        g.info().map(|i| i.vermagic)
    };
    let info =
        vesper_modcheck::check_module(&image, vermagic.as_deref(), daemon.config.max_image_size)
            .map_err(|e| ApiError::new(ErrorCode::BadModule, format!("{file_name}: {e}")))?;
    let params = check_params(&params)?;
    note_layout(daemon, guest, &info)?;
    let cmd = Command::Load {
        name: info.name.clone(),
        image: image.into(),
        params,
        init_timeout,
    };
    match run_command(daemon, guest, cmd).await? {
        GuestReply::Loaded { name, bytes } => Ok(Reply::Loaded {
            guest: guest.to_string(),
            name,
            bytes,
            millis: started.elapsed().as_secs_f64() * 1e3,
        }),
        other => Err(unexpected(other)),
    }
}

/// Keeps the record layout a probe-spec module carries (`vesper_record` modinfo) so its
/// records are decoded by name from the first one; forgets an older one for a module of
/// that name that carries none.
fn note_layout(
    daemon: &Shared,
    guest: &str,
    info: &vesper_modcheck::ModuleInfo,
) -> Result<(), ApiError> {
    let layout = info
        .record_layout
        .as_deref()
        .map(vesper_relay::layout::RecordLayout::parse)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::BadModule, format!("{}: {e}", info.name)))?;
    let guests = daemon.guests.lock().expect("guests lock");
    let g = guests
        .get(guest)
        .ok_or_else(|| unknown_guest(&guests, guest))?;
    if let Some(l) = &layout {
        tracing::debug!(guest, module = %info.name, probe = %l.probe, fields = l.fields.len(), "record layout");
    }
    // Kept in the run directory too: a vesperd that adopts the guest after a restart
    // decodes the module's records by name as this one does.
    crate::persist::Layouts::note(
        &vesper_api::run_dir::of(&daemon.config.run_dir, guest),
        &info.name,
        layout.as_ref().map(ToString::to_string),
    );
    g.relay
        .lock()
        .expect("relay lock")
        .set_layout(&info.name, layout);
    Ok(())
}

/// Joins module parameters, refusing what the kernel's parser would misread.
pub(crate) fn check_params(params: &[String]) -> Result<String, ApiError> {
    vesper_modcheck::join_params(params, vesper_shared_abi::PARAMS_LEN as usize - 1)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}
