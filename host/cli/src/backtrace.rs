//! How `vesper debug bt` prints a trace: one line per frame, innermost first, the way
//! the kernel's own traces read (`?` before a guessed frame, `[module]` after).

use vesper_api::{Backtrace, TraceEnd};

/// Prints `bt` for a terminal.
pub fn print(bt: &Backtrace) {
    let who = match (bt.pid, &bt.comm) {
        (Some(pid), Some(comm)) => format!("PID {pid} ({comm})"),
        (Some(pid), None) => format!("PID {pid}"),
        (None, Some(comm)) => format!("({comm})"),
        (None, None) => "(task unknown)".to_string(),
    };
    let cpu = bt.cpu.map(|c| format!(" on CPU {c}")).unwrap_or_default();
    println!("{who}{cpu}, from {}:", bt.source);
    for (i, f) in bt.frames.iter().enumerate() {
        let mark = if f.reliable { ' ' } else { '?' };
        let name = f.function.as_deref().unwrap_or("(not kernel text)");
        let module = f
            .module
            .as_ref()
            .map(|m| format!(" [{m}]"))
            .unwrap_or_default();
        let entry = if f.from_regs {
            "  (interrupted here)"
        } else {
            ""
        };
        println!(" #{i:<2} {mark} {:016x}  {name}{module}{entry}", f.ip);
    }
    match &bt.end {
        TraceEnd::StackEnd => {}
        TraceEnd::UserSpace { ip, sp } => {
            println!(" -- entered from user space at ip {ip:#x}, sp {sp:#x}")
        }
        TraceEnd::Error { message } => println!(" -- trace stopped: {message}"),
        TraceEnd::Limit => println!(" -- trace cut at {} frames", bt.frames.len()),
    }
}
