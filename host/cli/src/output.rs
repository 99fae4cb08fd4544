//! What the CLI prints for people (without `--json`): events, records, relay counters,
//! VMs and every other reply, one line per item where possible.

use vesper_api::{Decoded, Event, EventKind, RecordView, Reply, VmStatus};

pub(crate) fn event_line(e: &Event) -> String {
    let secs = e.time_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let src = match &e.source {
        vesper_api::Source::Probe { module, channel } => format!("probe {module}/{channel}"),
        vesper_api::Source::Qmp { event } => format!("qmp {event}"),
        vesper_api::Source::Vmm { event } => format!("vmm {event}"),
        vesper_api::Source::Process => "process".into(),
        vesper_api::Source::Frontend => "frontend".into(),
        vesper_api::Source::Engine => "engine".into(),
        vesper_api::Source::Cluster { origin, node } => format!("cluster {origin}@{node}"),
        vesper_api::Source::HostProbe => "host-probe".into(),
    };
    let detail = match e.kind {
        EventKind::Decision => e.payload["reason"].as_str().unwrap_or_default().to_string(),
        EventKind::Cluster => e.payload["summary"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        EventKind::GuestUp => format!(
            "kernel {} gen {}",
            e.payload["kernel_release"].as_str().unwrap_or("?"),
            e.payload["generation"]
        ),
        EventKind::VcpuStall => e.summary(),
        EventKind::ModuleLoaded | EventKind::ModuleFailed => {
            let module = e.payload["module"].as_str().unwrap_or("?");
            let ms = e.payload["init_ms"].as_f64().unwrap_or_default();
            let late = if e.payload["after_host_gave_up"] == true {
                " (after insmod stopped waiting)"
            } else {
                ""
            };
            match e.payload["errno_name"].as_str() {
                Some(errno) => format!("{module}: init failed with {errno} after {ms:.0} ms{late}"),
                None => format!("{module}: live, init took {ms:.0} ms{late}"),
            }
        }
        _ => {
            let mut p = e.payload.clone();
            if let Some(o) = p.as_object_mut() {
                for k in ["type", "cpu", "record_seq", "latency_ns"] {
                    o.remove(k);
                }
            }
            if p.is_null() {
                String::new()
            } else {
                p.to_string()
            }
        }
    };
    format!(
        "#{:<6} {h:02}:{m:02}:{s:02}.{:06} {:<10} {:<14} [{src}] {detail}",
        e.seq,
        (e.time_ns / 1000) % 1_000_000,
        e.guest,
        e.kind.name()
    )
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

pub(crate) fn record_line(r: &RecordView) -> String {
    let head = format!(
        "{:>10.6}s cpu{} #{:<5} {}/{}{}",
        r.guest_time_ns as f64 / 1e9,
        r.cpu,
        r.seq,
        r.module,
        r.channel,
        if r.urgent { " urgent" } else { "" }
    );
    let body = match &r.decoded {
        Decoded::Panic { cpu, pid, message } => format!("PANIC on cpu {cpu} (pid {pid}): {}", message.trim_end()),
        Decoded::Exit { pid, tid, signal, comm, .. } if *signal != 0 => {
            format!("exit {comm} pid={pid} tid={tid} killed by {} ({signal})", signal_name(*signal))
        }
        Decoded::Exit { pid, tid, status, comm, .. } => format!("exit {comm} pid={pid} tid={tid} status={status}"),
        Decoded::Oom { pid, comm, total_vm_kb, anon_rss_kb, file_rss_kb, oom_score_adj } => format!(
            "OOM kill {comm} pid={pid} total_vm={total_vm_kb}kB anon_rss={anon_rss_kb}kB file_rss={file_rss_kb}kB oom_score_adj={oom_score_adj}"
        ),
        Decoded::Stress { index, total } => format!("stress {index}/{total}"),
        Decoded::Probe { probe, fields } => {
            let mut line = probe.clone();
            for (k, v) in fields {
                let v = match v {
                    vesper_api::FieldValue::Int(i) => i.to_string(),
                    vesper_api::FieldValue::UInt(u) => u.to_string(),
                    vesper_api::FieldValue::Text(t) => format!("{t:?}"),
                };
                line.push_str(&format!(" {k}={v}"));
            }
            line
        }
        Decoded::Raw { rtype, len } => match &r.text {
            Some(t) => t.trim_end_matches('\0').trim_end().to_string(),
            None => format!("raw type {rtype}, {len} bytes"),
        },
    };
    format!("{head}  {body}")
}

pub(crate) fn print_host_stat(h: &vesper_api::HostStat) {
    if !h.available {
        println!(
            "{}: no host probes: {}",
            h.guest,
            h.message.as_deref().unwrap_or("unavailable")
        );
        return;
    }
    println!(
        "{}: watched {:.1} s, stall threshold {} ms, {} stall(s); tracepoints {}",
        h.guest,
        h.watched_ms as f64 / 1e3,
        h.threshold_ms,
        h.stalls,
        h.tracepoints.join(" ")
    );
    if let Some(m) = &h.message {
        println!("note: {m}");
    }
    println!(
        "{:>4} {:>8} {:<13} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  reasons",
        "vcpu", "tid", "state", "exits", "vmm_exits", "kvm_runs", "exits/s", "steal_ms", "cpu_ms"
    );
    for v in &h.vcpus {
        let reasons: Vec<String> = v
            .exit_reasons
            .iter()
            .take(4)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        println!(
            "{:>4} {:>8} {:<13} {:>10} {:>10} {:>10} {:>10.0} {:>10.1} {:>10.1}  {}",
            v.index,
            v.tid,
            if v.stalled {
                format!("{} STALL", v.state)
            } else {
                v.state.clone()
            },
            v.exits,
            v.vmm_exits,
            v.kvm_runs,
            v.exit_rate,
            v.steal_ms,
            v.on_cpu_ms,
            reasons.join(" ")
        );
    }
}

pub(crate) fn print_relay_stats(channels: &[vesper_api::ChannelView]) {
    if channels.is_empty() {
        println!("no relay channels");
        return;
    }
    let row = |cols: [&str; 10]| {
        println!(
            "{:<28} {:<6} {:>4} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
            cols[5],
            cols[6],
            cols[7],
            cols[8],
            cols[9]
        )
    };
    row([
        "module/channel",
        "state",
        "cpu",
        "produced",
        "consumed",
        "written",
        "received",
        "dropped",
        "lost",
        "mode",
    ]);
    for c in channels {
        let name = format!("{}/{}", c.module, c.channel);
        let state = if c.open { "open" } else { "closed" };
        let mode = if c.overwrite { "overwrite" } else { "no-overw" };
        for (cpu, b) in c.cpus.iter().enumerate() {
            let n = [
                cpu as u64,
                b.produced as u64,
                b.consumed as u64,
                b.written,
                b.received,
                b.dropped,
                b.lost,
            ]
            .map(|v| v.to_string());
            row([
                &name, state, &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], mode,
            ]);
        }
        if let Some(e) = &c.error {
            println!("  {name}: {e}");
        }
    }
}

/// A VM's line, and a second one saying why it has no frontend session when vesperd
/// told (`vm status` of a guest that runs without one).
pub(crate) fn vm_line(v: &VmStatus) -> String {
    let mut line = vm_summary(v);
    if let Some(a) = attached_line(v) {
        line = format!("{line}\n{a}");
    }
    match &v.frontend {
        Some(why) => format!("{line}\n{}: no frontend session: {why}", v.name),
        None => line,
    }
}

fn vm_summary(v: &VmStatus) -> String {
    let guest = match &v.guest {
        Some(g) => format!("kernel {} gen {}", g.kernel_release, g.generation),
        None => "frontend not connected".into(),
    };
    let boot = v
        .boot_secs
        .map(|s| format!(", up after {s:.1}s"))
        .unwrap_or_default();
    format!(
        "{:<12} {:<8} {:<7} pid {:<8} {} ({}), {guest}{boot}",
        v.name,
        v.state,
        v.vmm.to_string(),
        v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        serde_json::to_value(v.accel.accel)
            .ok()
            .and_then(|a| a.as_str().map(str::to_string))
            .unwrap_or_default(),
        v.accel.reason
    )
}

pub(crate) fn print_human(reply: &Reply) {
    if print_attach(reply).is_some() {
        return;
    }
    match reply {
        Reply::VmStarted(v) => {
            println!("{}", vm_line(v));
            println!("console log: {}", v.console_log.display());
        }
        Reply::VmFenced {
            name,
            fenced: true,
            stopped,
        } => println!(
            "{name}: fenced on this host{}",
            if *stopped { " (its VM was stopped)" } else { "" }
        ),
        Reply::VmFenced { name, .. } => println!("{name}: not fenced"),
        Reply::VmStopped {
            name,
            killed: false,
        } => println!("{name}: stopped"),
        Reply::VmStopped { name, killed: true } => {
            println!("{name}: stopped (killed: it did not quit within its grace period)")
        }
        Reply::VmSent { .. } => {}
        // Printed by print_attach above.
        Reply::VmAttached(_) | Reply::VmDetached { .. } => {}
        Reply::VmList { vms } if vms.is_empty() => println!("no VMs"),
        Reply::VmList { vms } => vms.iter().for_each(|v| println!("{}", vm_line(v))),
        Reply::KitInfo {
            dir,
            release: Some(release),
            ..
        } => println!("kit {} (kernel {release})", dir.display()),
        Reply::KitInfo { dir, problem, .. } => println!(
            "no kit at {}: {}",
            dir.display(),
            problem.as_deref().unwrap_or("not usable")
        ),
        Reply::Loaded {
            guest,
            name,
            bytes,
            millis,
        } => {
            println!("{guest}: loaded {name} ({bytes} bytes pushed, {millis:.1} ms)")
        }
        Reply::Unloaded {
            guest,
            name,
            millis,
        } => println!("{guest}: unloaded {name} ({millis:.1} ms)"),
        Reply::GroupApplied {
            guest,
            group,
            modules,
            millis,
        } => println!(
            "{guest}: group {group} loaded: {} ({millis:.1} ms)",
            modules.join(", ")
        ),
        Reply::GroupRemoved {
            guest,
            group,
            removed,
            not_loaded,
            millis,
        } => {
            println!(
                "{guest}: group {group} removed: {} ({millis:.1} ms)",
                if removed.is_empty() { "nothing unloaded".to_string() } else { removed.join(", ") }
            );
            if !not_loaded.is_empty() {
                println!("{guest}: group {group}: not loaded: {}", not_loaded.join(", "));
            }
        }
        Reply::Groups { guest, groups } if groups.is_empty() => {
            println!("{guest}: no probe groups applied by this vesperd")
        }
        Reply::Groups { groups, .. } => {
            for g in groups {
                let members: Vec<String> = g
                    .members
                    .iter()
                    .map(|m| format!("{}{}", m.module, if m.loaded { "" } else { " (not loaded)" }))
                    .collect();
                println!("{:<20} {}  [{}]", g.name, members.join(", "), g.source);
            }
        }
        Reply::Modules { modules, .. } => {
            println!(
                "{:<24} {:>10} {:>4}  {:<8} by",
                "Module", "Size", "Used", "State"
            );
            for m in modules {
                let by = if m.frontend {
                    "vesper (frontend)"
                } else if m.pushed {
                    "vesper"
                } else {
                    "-"
                };
                println!(
                    "{:<24} {:>10} {:>4}  {:<8} {by}",
                    m.name, m.size, m.refcount, m.state
                );
            }
        }
        Reply::Kmsg { log, .. } => print!(
            "{}",
            if log.ends_with('\n') {
                log.clone()
            } else {
                format!("{log}\n")
            }
        ),
        Reply::RelayStats { channels, .. } => print_relay_stats(channels),
        Reply::HostStat(h) => print_host_stat(h),
        Reply::Published { seq } => println!("event #{seq}"),
        Reply::Record(r) => println!("{}", record_line(r)),
        Reply::Gap { missed } => {
            println!("-- {missed} missed (reader too slow, or older than the daemon keeps) --")
        }
        Reply::Event(e) => println!("{}", event_line(e)),
        Reply::VmStatus(v) => println!("{}", vm_line(v)),
        Reply::VmPaused { name, paused } => {
            println!("{name}: {}", if *paused { "paused" } else { "running" })
        }
        Reply::DebugInfo(i) => println!(
            "{}: Linux {}, KASLR offset {:#x}, {} symbols, VMCOREINFO at guest-physical {:#x}, {}-level page tables at {:#x}, {} MiB RAM read through {}",
            i.guest,
            i.release,
            i.kaslr_offset,
            i.symbols,
            i.vmcoreinfo_paddr,
            if i.five_level { 5 } else { 4 },
            i.page_table_root,
            i.ram_mib,
            if i.ram_source.is_empty() { "?" } else { &i.ram_source }
        ),
        Reply::DebugSymbols { symbols, .. } => {
            for m in symbols {
                match m.offset {
                    Some(off) => println!(
                        "{:#018x} {} {}+{off:#x}",
                        m.symbol.addr + off,
                        m.symbol.kind,
                        m.symbol.name
                    ),
                    None => println!("{:#018x} {} {}", m.symbol.addr, m.symbol.kind, m.symbol.name),
                }
            }
        }
        Reply::DebugValue { value, .. } => {
            let at = value
                .symbol
                .as_deref()
                .map(|s| format!(" <{s}>"))
                .unwrap_or_default();
            println!(
                "{} = {}\n  ({}, {} bytes at {:#x}{at})",
                value.expr,
                serde_json::to_string_pretty(&value.value).unwrap_or_default(),
                value.type_name,
                value.size,
                value.address
            );
        }
        Reply::DebugTasks { tasks, torn, .. } => {
            println!("{:>7} {:>7} {:>7} S {:>3} COMM", "PID", "TGID", "PPID", "CPU");
            for t in tasks {
                let cpu = t.cpu.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                let comm = if t.kernel_thread {
                    format!("[{}]", t.comm)
                } else {
                    t.comm.clone()
                };
                println!(
                    "{:>7} {:>7} {:>7} {} {:>3} {comm}",
                    t.pid, t.tgid, t.ppid, t.state, cpu
                );
            }
            if let Some(why) = torn {
                println!("-- walk stopped early: {why} --");
            }
        }
        Reply::DebugDump { dump, .. } => println!(
            "{}: {} bytes ({} MiB of RAM, {} zero pages left out, {} segments) in {} ms",
            dump.path.display(),
            dump.bytes_written,
            dump.ram_bytes >> 20,
            dump.zero_pages_skipped,
            dump.segments,
            dump.millis
        ),
        Reply::DebugDumps { dumps, guest } if dumps.is_empty() => println!("{guest}: no vmcores"),
        Reply::DebugDumps { dumps, .. } => {
            for d in dumps {
                println!("{:>12} {}", d.bytes, d.path.display());
            }
        }
        Reply::DebugGdb(g) => {
            println!(
                "{}: gdb endpoint at {}; symbols from {} (.text at {:#x}, KASLR offset {:#x})",
                g.guest,
                g.socket.display(),
                g.symbol_file.display(),
                g.text_base,
                g.kaslr_offset
            );
            println!("{}", shell_words(&g.command));
        }
        Reply::DebugBacktrace { backtrace, .. } => crate::backtrace::print(backtrace),
        Reply::DebugLog { records, torn, .. } => {
            print!("{}", vesper_api::format_dmesg(records));
            if *torn > 0 {
                println!("-- {torn} record(s) skipped: the guest was rewriting them --");
            }
        }
        Reply::End { .. } => {}
    }
}

/// `words` as one shell command line, each word quoted when it needs to be.
pub(crate) fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How an attached VM is reached, for its `vm list` / `vm status` line.
fn attached_line(v: &VmStatus) -> Option<String> {
    let a = v.attached.as_ref()?;
    Some(format!(
        "{}: attached over {} {}; guest RAM read through {}; QMP for other clients: {}",
        v.name,
        a.how,
        a.target,
        a.ram,
        a.qmp.display()
    ))
}

/// The human lines of a `vm attach` or `vm detach` reply; `None` for any other reply.
fn print_attach(reply: &Reply) -> Option<()> {
    match reply {
        Reply::VmAttached(v) => println!("{}", vm_line(v)),
        Reply::VmDetached {
            name,
            unplugged,
            note,
        } => {
            let how = if *unplugged {
                "its Vesper device unplugged"
            } else {
                "its Vesper device still plugged"
            };
            println!("{name}: detached, the VM runs on ({how})");
            if let Some(n) = note {
                println!("{name}: {n}");
            }
        }
        _ => return None,
    }
    Some(())
}
