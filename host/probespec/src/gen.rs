//! C for a [`Plan`]: a kernel module against Vesper's relay API whose handler filters,
//! fills one record struct and writes it, and whose `.modinfo` carries the record's
//! layout (`vesper_record`) for the host to decode it by name.

use std::fmt::Write;

use vesper_relay::layout::{FieldType, MODINFO_KEY};

use crate::check::{Cond, Plan, Value};
use crate::syntax::{Base, BitOp, ProbePoint};

/// Bumped whenever the generated C changes: part of the build cache key.
pub const GENERATOR_VERSION: u32 = 1;

/// Registers of the x86-64 calling convention, in argument order.
const ARG_REGS: [&str; 6] = ["di", "si", "dx", "cx", "r8", "r9"];

fn c_int(t: FieldType) -> &'static str {
    match t {
        FieldType::Int {
            size: 1,
            signed: true,
        } => "s8",
        FieldType::Int {
            size: 2,
            signed: true,
        } => "s16",
        FieldType::Int {
            size: 4,
            signed: true,
        } => "s32",
        FieldType::Int {
            size: 8,
            signed: true,
        } => "s64",
        FieldType::Int { size: 1, .. } => "u8",
        FieldType::Int { size: 2, .. } => "u16",
        FieldType::Int { size: 4, .. } => "u32",
        _ => "u64",
    }
}

fn c_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    out
}

/// The C expression of a value's base (an `unsigned long` for member walks).
fn base_expr(v: &Value) -> String {
    match v.base {
        Base::Pid => "task_tgid_nr(current)".into(),
        Base::Tid => "task_pid_nr(current)".into(),
        Base::Cpu => "raw_smp_processor_id()".into(),
        Base::Task => "(unsigned long)current".into(),
        Base::Arg(n) => format!("regs_get_kernel_argument(regs, {n})"),
        Base::Retval => "regs_return_value(regs)".into(),
        Base::Comm => "current->comm".into(),
    }
}

/// `static bool vp_val_N(struct pt_regs *regs, T *out)`: reads value N (false when a
/// pointer on the way cannot be read).
fn value_fn(out: &mut String, i: usize, v: &Value) {
    let _ = writeln!(out, "/* {} */", v.text.replace("*/", "* /"));
    match v.ty {
        FieldType::Text { len } => {
            let _ = writeln!(
                out,
                "static __always_inline bool vp_val_{i}(struct pt_regs *regs, char *out)\n{{"
            );
            if v.base == Base::Comm {
                let _ = writeln!(out, "\tmemcpy(out, current->comm, {len});");
            } else {
                walk(out, v);
                let _ = writeln!(out, "\tif (copy_from_kernel_nofault(out, (const void *)(p + {}), {len}))\n\t\treturn false;", v.last.unwrap_or(0));
            }
            let _ = writeln!(out, "\tout[{}] = '\\0';\n\treturn true;\n}}\n", len - 1);
        }
        FieldType::Int { size, .. } => {
            let t = c_int(v.ty);
            let _ = writeln!(out, "static __always_inline bool vp_val_{i}(struct pt_regs *regs, {t} *out)\n{{\n\t{t} x;");
            match v.last {
                None => {
                    let _ = writeln!(out, "\tx = ({t})({});", base_expr(v));
                }
                Some(off) => {
                    walk(out, v);
                    let _ = writeln!(out, "\tif (copy_from_kernel_nofault(&x, (const void *)(p + {off}), {size}))\n\t\treturn false;");
                }
            }
            for op in &v.ops {
                let _ = match op {
                    BitOp::Shr(n) => writeln!(out, "\tx = ({t})((u64)x >> {n});"),
                    BitOp::And(m) => writeln!(out, "\tx = ({t})((u64)x & {m:#x}ULL);"),
                };
            }
            let _ = writeln!(out, "\t*out = x;\n\treturn true;\n}}\n");
        }
    }
}

/// Loads the pointers on the way to a member into `p`.
fn walk(out: &mut String, v: &Value) {
    let _ = writeln!(
        out,
        "\tunsigned long p = (unsigned long)({});",
        base_expr(v)
    );
    for off in &v.derefs {
        let _ = writeln!(out, "\tif (copy_from_kernel_nofault(&p, (const void *)(p + {off}), sizeof(p)))\n\t\treturn false;");
    }
}

fn cond_expr(out: &mut String, fns: &mut String, plan: &Plan, c: &Cond, n: &mut usize) {
    match c {
        Cond::And(a, b) | Cond::Or(a, b) => {
            out.push('(');
            cond_expr(out, fns, plan, a, n);
            out.push_str(if matches!(c, Cond::And(..)) {
                " && "
            } else {
                " || "
            });
            cond_expr(out, fns, plan, b, n);
            out.push(')');
        }
        Cond::Not(a) => {
            out.push_str("!(");
            cond_expr(out, fns, plan, a, n);
            out.push(')');
        }
        leaf => {
            let k = *n;
            *n += 1;
            let _ = writeln!(
                fns,
                "static __always_inline bool vp_cond_{k}(struct pt_regs *regs)\n{{"
            );
            match leaf {
                Cond::Str(v, op, s) if plan.values[*v].base == Base::Comm => {
                    let _ = writeln!(
                        fns,
                        "\treturn strncmp(current->comm, {}, TASK_COMM_LEN) {} 0;",
                        c_str(s),
                        op.c()
                    );
                }
                Cond::Str(v, op, s) => {
                    let FieldType::Text { len } = plan.values[*v].ty else {
                        unreachable!("checked")
                    };
                    let _ = writeln!(fns, "\tchar a[{len}];\n\tif (!vp_val_{v}(regs, a))\n\t\treturn false;\n\treturn strncmp(a, {}, {len}) {} 0;", c_str(s), op.c());
                }
                Cond::Int(v, op, lit) => {
                    let t = c_int(plan.values[*v].ty);
                    let lit = if *lit < 0 {
                        format!("({lit}LL)")
                    } else {
                        format!("{lit}ULL")
                    };
                    let _ = writeln!(fns, "\t{t} a;\n\tif (!vp_val_{v}(regs, &a))\n\t\treturn false;\n\treturn a {} ({t}){lit};", op.c());
                }
                Cond::Values(v, op, w) => match plan.values[*v].ty {
                    FieldType::Text { len } => {
                        let _ = writeln!(fns, "\tchar a[{len}], b[{}];\n\tif (!vp_val_{v}(regs, a) || !vp_val_{w}(regs, b))\n\t\treturn false;\n\treturn strncmp(a, b, {len}) {} 0;", match plan.values[*w].ty { FieldType::Text { len } => len, _ => 1 }, op.c());
                    }
                    _ => {
                        let (t, u) = (c_int(plan.values[*v].ty), c_int(plan.values[*w].ty));
                        let _ = writeln!(fns, "\t{t} a;\n\t{u} b;\n\tif (!vp_val_{v}(regs, &a) || !vp_val_{w}(regs, &b))\n\t\treturn false;\n\treturn a {} b;", op.c());
                    }
                },
                _ => unreachable!("And/Or handled above"),
            }
            fns.push_str("}\n\n");
            let _ = write!(out, "vp_cond_{k}(regs)");
        }
    }
}

/// The module's C source. `origin` (the spec's file and hash) goes into a comment.
pub fn generate(plan: &Plan, origin: &str) -> String {
    let mut c = String::new();
    let l = &plan.layout;
    let _ = writeln!(c, "// SPDX-License-Identifier: GPL-2.0\n/*\n * {}: generated by vesper-probespec (generator {GENERATOR_VERSION}) from\n * {}. Do not edit: change the spec.\n */", plan.module, origin.replace("*/", "* /"));
    for h in [
        "module",
        "kernel",
        "kprobes",
        "sched",
        "string",
        "uaccess",
        "ptrace",
        "atomic",
        "err",
        "tracepoint",
        "smp",
    ] {
        let _ = writeln!(c, "#include <linux/{h}.h>");
    }
    c.push_str("#include \"vesper_relay_api.h\"\n\n");

    // The record: the same fields and offsets as the layout, asserted.
    c.push_str("struct vp_record {\n");
    let mut at = 0;
    for (i, f) in l.fields.iter().enumerate() {
        if f.offset > at {
            let _ = writeln!(c, "\tu8 vp_pad{i}[{}];", f.offset - at);
        }
        let _ = match f.ty {
            FieldType::Text { len } => writeln!(c, "\tchar {}[{len}];", f.name),
            t => writeln!(c, "\t{} {};", c_int(t), f.name),
        };
        at = f.offset + f.ty.size();
    }
    c.push_str("};\n");
    let _ = writeln!(
        c,
        "_Static_assert(sizeof(struct vp_record) == {}, \"record size\");",
        l.size
    );
    for f in &l.fields {
        let _ = writeln!(
            c,
            "_Static_assert(offsetof(struct vp_record, {0}) == {1}, \"{0}\");",
            f.name, f.offset
        );
    }
    let _ = writeln!(
        c,
        "\nMODULE_INFO({MODINFO_KEY}, {});\n",
        c_str(&l.to_string())
    );
    c.push_str("static struct vesper_relay *vp_chan;\nstatic atomic_long_t vp_hits = ATOMIC_LONG_INIT(0);\nstatic atomic_long_t vp_written = ATOMIC_LONG_INIT(0);\n\n");

    for (i, v) in plan.values.iter().enumerate() {
        value_fn(&mut c, i, v);
    }
    let mut fns = String::new();
    let mut filter = String::new();
    if let Some(f) = &plan.filter {
        cond_expr(&mut filter, &mut fns, plan, f, &mut 0);
    }
    c.push_str(&fns);

    // The hit: filter, fill, write.
    let flags = if l.urgent {
        "VESPER_RECORD_FLAG_URGENT"
    } else {
        "0"
    };
    c.push_str("static void vp_hit(struct pt_regs *regs)\n{\n\tstruct vp_record rec;\n\n\tatomic_long_inc(&vp_hits);\n");
    if !filter.is_empty() {
        let _ = writeln!(c, "\tif (!{filter})\n\t\treturn;");
    }
    c.push_str("\tmemset(&rec, 0, sizeof(rec));\n");
    for (f, &v) in l.fields.iter().zip(&plan.fields) {
        let _ = match f.ty {
            FieldType::Text { .. } => writeln!(c, "\tvp_val_{v}(regs, rec.{});", f.name),
            _ => writeln!(c, "\tvp_val_{v}(regs, &rec.{});", f.name),
        };
    }
    let _ = writeln!(c, "\tif (!vesper_relay_write(vp_chan, VESPER_RECORD_SPEC, {flags}, &rec, sizeof(rec)))\n\t\tatomic_long_inc(&vp_written);\n}}\n");

    // The probe point.
    let (register, unregister) = match &plan.point {
        ProbePoint::Kprobe(f) => {
            let _ = writeln!(c, "static int vp_pre(struct kprobe *p, struct pt_regs *regs)\n{{\n\tvp_hit(regs);\n\treturn 0;\n}}\n\nstatic struct kprobe vp_kp = {{\n\t.symbol_name = {},\n\t.pre_handler = vp_pre,\n}};\n", c_str(f));
            (
                "register_kprobe(&vp_kp)".to_string(),
                "unregister_kprobe(&vp_kp);".to_string(),
            )
        }
        ProbePoint::Kretprobe(f) => {
            let _ = writeln!(c, "static int vp_ret(struct kretprobe_instance *ri, struct pt_regs *regs)\n{{\n\tvp_hit(regs);\n\treturn 0;\n}}\n\nstatic struct kretprobe vp_krp = {{\n\t.kp.symbol_name = {},\n\t.handler = vp_ret,\n}};\n", c_str(f));
            (
                "register_kretprobe(&vp_krp)".to_string(),
                "unregister_kretprobe(&vp_krp);".to_string(),
            )
        }
        ProbePoint::Tracepoint { event, .. } => {
            // The tracepoint's arguments go where a kprobe finds them: argument registers.
            let params: Vec<String> = (0..plan.tp_args)
                .map(|i| format!(", unsigned long a{i}"))
                .collect();
            let _ = writeln!(c, "static struct tracepoint *vp_tp;\n\nstatic void vp_tp_probe(void *data{})\n{{\n\tstruct pt_regs regs = {{}};\n", params.concat());
            for (i, reg) in ARG_REGS.iter().enumerate().take(plan.tp_args) {
                let _ = writeln!(c, "\tregs.{reg} = a{i};");
            }
            let _ = writeln!(c, "\tvp_hit(&regs);\n}}\n\nstatic void vp_find_tp(struct tracepoint *tp, void *priv)\n{{\n\tif (!strcmp(tp->name, {}))\n\t\t*(struct tracepoint **)priv = tp;\n}}\n", c_str(event));
            (
                "(for_each_kernel_tracepoint(vp_find_tp, &vp_tp), vp_tp ? tracepoint_probe_register(vp_tp, (void *)vp_tp_probe, NULL) : -ENOENT)".to_string(),
                "tracepoint_probe_unregister(vp_tp, (void *)vp_tp_probe, NULL);\n\ttracepoint_synchronize_unregister();".to_string(),
            )
        }
    };
    let m = &plan.module;
    let _ = writeln!(
        c,
        r#"static int __init vp_init(void)
{{
	struct vesper_relay *chan;
	int ret;

	chan = vesper_relay_open(THIS_MODULE, {chan}, 4096, 4, 0);
	if (IS_ERR(chan)) {{
		pr_warn("{m}: relay channel {chan_q} unavailable (%ld); records are dropped\n", PTR_ERR(chan));
		chan = NULL;
	}}
	vp_chan = chan;
	ret = {register};
	if (ret) {{
		pr_err("{m}: cannot probe {point}: %d\n", ret);
		vesper_relay_close(vp_chan);
		return ret;
	}}
	pr_info("{m}: probing {point}\n");
	return 0;
}}

static void __exit vp_exit(void)
{{
	{unregister}
	vesper_relay_close(vp_chan);
	pr_info("{m}: removed after %ld hits, %ld records\n", atomic_long_read(&vp_hits), atomic_long_read(&vp_written));
}}

module_init(vp_init);
module_exit(vp_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper probe generated from a spec: {point}");"#,
        chan = c_str(&plan.name),
        chan_q = plan.name,
        point = point_text(&plan.point),
    );
    c
}

/// The probe point as written.
pub fn point_text(p: &ProbePoint) -> String {
    match p {
        ProbePoint::Kprobe(f) => format!("kprobe:{f}"),
        ProbePoint::Kretprobe(f) => format!("kretprobe:{f}"),
        ProbePoint::Tracepoint { system, event } => format!("tracepoint:{system}:{event}"),
    }
}
