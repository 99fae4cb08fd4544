//! `vm attach NAME --libvirt DOMAIN`: a libvirt domain whose XML carries the Vesper
//! device — a `<shmem>` of model `ivshmem-doorbell` whose `<server path=…>` is the
//! ivshmem server vesperd serves (README.md, "VMs Vesper did not start"). QEMU connects
//! to that server once, when it starts, so vesperd serves it first and then starts the
//! domain through libvirt, answering QEMU while `virsh start` runs. libvirt owns QEMU's
//! monitor: QMP goes through `virsh qemu-monitor-command`/`qemu-monitor-event`
//! (`qmp_mux.rs`), the life cycle through `virsh shutdown`/`destroy`, and QEMU's pid
//! comes from libvirt's pid file (checked against the process's command line).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vesper_api::{ApiError, ErrorCode, Response, VmAttachRequest};
use vesper_ivshmem::IvshmemTransport;

use crate::attach_task::Attaching;
use crate::attached_vm::Owner;
use crate::daemon::Shared;
use crate::guest::Link;
use crate::persist::AttachedRecord;
use crate::virsh::Virsh;

/// How long a domain may take to start.
const START_WAIT: Duration = Duration::from_secs(120);

/// The Vesper device of a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shmem {
    /// The `<shmem name=…>`.
    pub(crate) name: String,
    /// Its `<server path=…>`: where vesperd serves the region.
    pub(crate) path: PathBuf,
}

/// The XML a domain needs for `vm attach NAME --libvirt` (inside `<devices>`, and the
/// memory backing `vesper debug` maps at once; without it, debug reads /proc/PID/mem).
pub(crate) fn fragment(name: &str, run_dir: &Path) -> String {
    let path = vesper_api::run_dir::ivshmem_socket(&vesper_api::run_dir::of(run_dir, name));
    format!(
        "  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\n  <devices>\n    <shmem name='vesper-{name}'>\n      <model type='ivshmem-doorbell'/>\n      <server path='{}'/>\n      <msi vectors='{}' ioeventfd='on'/>\n    </shmem>\n  </devices>",
        path.display(),
        vesper_ivshmem::transport_vectors()
    )
}

/// The domain's Vesper device: the first `ivshmem-doorbell` `<shmem>` with a server.
pub(crate) fn find_shmem(xml: &str) -> Result<Option<Shmem>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("the domain's XML: {e}"))?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("shmem"))
        .find_map(|n| {
            let model = n.children().find(|c| c.has_tag_name("model"))?;
            let path = n
                .children()
                .find(|c| c.has_tag_name("server"))?
                .attribute("path")?;
            (model.attribute("type") == Some("ivshmem-doorbell")).then(|| Shmem {
                name: n.attribute("name").unwrap_or_default().to_string(),
                path: PathBuf::from(path),
            })
        }))
}

/// The domain's serial console, when it is a Unix socket QEMU listens on.
pub(crate) fn find_serial(xml: &str) -> Option<PathBuf> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .filter(|n| n.has_tag_name("serial") && n.attribute("type") == Some("unix"))
        .find_map(|n| {
            let src = n.children().find(|c| c.has_tag_name("source"))?;
            let path = src.attribute("path")?;
            (src.attribute("mode") == Some("bind")).then(|| PathBuf::from(path))
        })
}

/// The live XML of the domain's `<shmem>` named `name` (with the address libvirt gave
/// it), for `virsh detach-device`.
fn live_shmem(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let n = doc
        .descendants()
        .find(|n| n.has_tag_name("shmem") && n.attribute("name") == Some(name))?;
    xml.get(n.range()).map(str::to_string)
}

/// QEMU's pid: libvirt's pid file, else the QEMU whose command line names `server`
/// (a libvirtd in a mount namespace of its own keeps its pid files out of sight).
fn qemu_pid(domain: &str, server: &Path) -> Option<u32> {
    let names_server = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*server.to_string_lossy()))
            .unwrap_or(false)
            && crate::persist::is_qemu(pid)
    };
    let file = format!("/run/libvirt/qemu/{domain}.pid");
    if let Some(pid) = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|p| names_server(*p))
    {
        return Some(pid);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| names_server(*p))
}

/// `vm attach NAME --libvirt DOMAIN [--connect URI]`.
pub(crate) async fn attach(
    daemon: &Shared,
    a: VmAttachRequest,
    domain: &str,
    uri: Option<&str>,
) -> Response {
    let name = a.name.clone();
    let failed = |m: String| ApiError::new(ErrorCode::AttachFailed, format!("{name}: {m}"));
    let virsh = Virsh::new(domain, uri);
    // The domain is checked before anything is made for it.
    let xml = virsh.dumpxml(true).await.map_err(|e| {
        failed(format!(
            "no libvirt domain {domain} on {} ({e}); `virsh -c {} list --all` lists them",
            virsh.uri, virsh.uri
        ))
    })?;
    let shmem = find_shmem(&xml).map_err(&failed)?.ok_or_else(|| {
        failed(format!(
            "libvirt domain {domain} has no Vesper device; add this to its XML (`virsh edit {domain}`) and attach again:\n{}",
            fragment(&name, &daemon.config.run_dir)
        ))
    })?;
    let state = virsh.state().await.map_err(&failed)?;
    if state != "shut off" {
        return Err(failed(format!(
            "libvirt domain {domain} is {state}: QEMU connects its Vesper device once, when it starts, so vesperd must serve it first; shut it down (`virsh shutdown {domain}`) and attach again: vesperd starts it"
        )));
    }
    let (dir, created) = crate::attach_task::prepare(daemon, &name).await?;
    match start_domain(&name, &dir, &virsh, &shmem).await {
        Ok((link, pid, mux, facts, live)) => {
            let at = Attaching {
                name: name.clone(),
                dir,
                pid,
                start_time: crate::persist::proc_start(pid).map_or(0, |s| s.0),
                facts,
                link,
                owner: Owner::Libvirt(virsh.clone()),
                mux,
                record: AttachedRecord::Libvirt {
                    uri: virsh.uri.clone(),
                    domain: domain.to_string(),
                    ivshmem: shmem.path.clone(),
                },
                console: a.console.clone().or_else(|| find_serial(&live)),
                wait_secs: a.wait_secs,
            };
            crate::attach_task::start(daemon, at).await
        }
        Err(e) => {
            crate::attach_task::undo_dir(&dir, created);
            Err(failed(e))
        }
    }
}

type Started = (
    Link,
    u32,
    crate::qmp_mux::QmpMux,
    crate::attach_task::Facts,
    String,
);

/// Serves the domain's ivshmem server, starts the domain and reaches its QEMU; a domain
/// it started is destroyed again if anything after fails.
async fn start_domain(
    name: &str,
    dir: &Path,
    virsh: &Virsh,
    shmem: &Shmem,
) -> Result<Started, String> {
    let mut transport =
        IvshmemTransport::new(name, &shmem.path, vesper_shared_abi::DEFAULT_REGION_SIZE)
            .map_err(|e| format!("cannot serve the domain's Vesper device: {e}"))?;
    let start = {
        let v = virsh.clone();
        tokio::spawn(async move { v.act("start").await })
    };
    // QEMU waits in its device's set-up for the region: answer it while libvirt waits.
    let deadline = Instant::now() + START_WAIT;
    while !(start.is_finished() && transport.connected()) {
        if !transport.connected() {
            transport.accept().map_err(|e| e.to_string())?;
        }
        if (start.is_finished() && !transport.connected()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = start
        .await
        .map_err(|e| format!("the start worker failed: {e}"))?;
    started.map_err(|e| format!("libvirt did not start the domain: {e}"))?;
    let r = reach(dir, virsh, shmem, transport.connected()).await;
    match r {
        Ok((pid, mux, facts, live)) => Ok((Link::Ivshmem(transport), pid, mux, facts, live)),
        Err(e) => {
            let _ = virsh.act("destroy").await;
            Err(e)
        }
    }
}

async fn reach(
    dir: &Path,
    virsh: &Virsh,
    shmem: &Shmem,
    connected: bool,
) -> Result<
    (
        u32,
        crate::qmp_mux::QmpMux,
        crate::attach_task::Facts,
        String,
    ),
    String,
> {
    if !connected {
        return Err(format!(
            "the domain started but its QEMU never connected to {}",
            shmem.path.display()
        ));
    }
    let pid = qemu_pid(&virsh.domain, &shmem.path).ok_or_else(|| {
        format!(
            "cannot find the domain's QEMU (no /run/libvirt/qemu/{}.pid naming {})",
            virsh.domain,
            shmem.path.display()
        )
    })?;
    let serve = [
        vesper_api::run_dir::qmp_socket(dir),
        vesper_api::run_dir::qmp_events_socket(dir),
    ];
    let mux = crate::qmp_mux::serve_libvirt(virsh.clone(), &serve).await?;
    let qmp = serve[0].clone();
    let facts = tokio::task::spawn_blocking(move || {
        vesper_qemu::Qmp::connect(&qmp, Duration::from_secs(30))
            .and_then(|mut q| crate::attach_task::facts(&mut q))
            .map_err(|e| format!("QMP through libvirt: {e}"))
    })
    .await
    .map_err(|e| format!("the attach worker failed: {e}"))??;
    let live = virsh.dumpxml(false).await?;
    Ok((pid, mux, facts, live))
}

/// `vm detach` of a libvirt domain: its live `<shmem>` unplugged through libvirt (the
/// persistent definition keeps it, for the next attach).
pub(crate) async fn unplug(dir: &Path, name: &str) -> (bool, Option<String>) {
    let Ok(crate::persist::VmRecord {
        attached: Some(AttachedRecord::Libvirt { uri, domain, .. }),
        ..
    }) = crate::persist::VmRecord::load(dir)
    else {
        return (
            false,
            Some("no libvirt record in vm.json; the device stays".into()),
        );
    };
    let virsh = Virsh::new(&domain, Some(&uri));
    let xml = match virsh.dumpxml(false).await {
        Ok(x) => x,
        Err(e) => return (false, Some(e)),
    };
    let Some(dev) = find_shmem(&xml)
        .ok()
        .flatten()
        .and_then(|s| live_shmem(&xml, &s.name))
    else {
        return (true, Some("the domain has no live Vesper device".into()));
    };
    let file = dir.join("shmem-detach.xml");
    if let Err(e) = std::fs::write(&file, dev) {
        return (false, Some(format!("cannot write {}: {e}", file.display())));
    }
    let r = virsh
        .run(&["detach-device", &domain, &file.to_string_lossy(), "--live"])
        .await;
    let _ = std::fs::remove_file(&file);
    match r {
        Ok(_) => (true, None),
        Err(e) => (
            false,
            Some(format!("{e}; vesperd lets go of {name} anyway")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vesper_device_and_the_console_are_found_in_a_domain() {
        let xml = format!(
            "<domain type='qemu'><name>d</name><devices>\
             <serial type='pty'><target port='0'/></serial>\
             <serial type='unix'><source mode='bind' path='/r/c.sock'/></serial>\
             <shmem name='other'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>\
             {}</devices></domain>",
            fragment("web1", Path::new("/run/v"))
                .split("<devices>")
                .nth(1)
                .and_then(|d| d.split("</devices>").next())
                .unwrap()
        );
        let s = find_shmem(&xml).unwrap().unwrap();
        assert_eq!(s.name, "vesper-web1");
        assert_eq!(s.path, PathBuf::from("/run/v/guests/web1/ivshmem.sock"));
        assert_eq!(find_serial(&xml), Some(PathBuf::from("/r/c.sock")));
        assert!(live_shmem(&xml, "vesper-web1")
            .unwrap()
            .starts_with("<shmem name='vesper-web1'>"));
        let bare = "<domain><devices><serial type='pty'/></devices></domain>";
        assert_eq!(find_shmem(bare).unwrap(), None);
        assert_eq!(find_serial(bare), None);
        assert!(find_shmem("<domain>").is_err());
    }
}
