//! Parser, checker and generator against a small hand-made kernel: `do_exit(long)`,
//! `mark_oom_victim(struct task_struct *)`, `kmalloc_ret() -> void *`, a
//! `sched_process_exit` tracepoint, and task_struct → signal_struct members.

use std::collections::BTreeSet;

use vesper_debug::btf::{Btf, Member, Type};
use vesper_relay::layout::FieldType;

use crate::error::{Pos, SpecError};
use crate::syntax::{parse, Base, ProbePoint};
use crate::{check_text, generate, KernelInfo};

fn m(name: &str, type_id: u32, byte: u64) -> Member {
    Member {
        name: Some(name.into()),
        type_id,
        bit_offset: byte * 8,
        bitfield_size: None,
    }
}

/// Ids: 1 int, 2 long, 3 char, 4 char[16], 5 short, 6 struct signal_struct,
/// 7 *signal, 8 struct task_struct, 9 *task, 10 proto(long), 11 do_exit,
/// 12 proto(task*), 13 mark_oom_victim, 14 void* , 15 proto()->void*, 16 kmalloc_ret,
/// 17 proto(void*, task*), 18 *proto, 19 typedef btf_trace_sched_process_exit,
/// 20 unsigned int (bitfield holder).
fn kernel() -> KernelInfo {
    let int = |name: &str, size, signed| Type::Int {
        name: name.into(),
        size,
        signed,
        is_char: false,
        is_bool: false,
        bits: size * 8,
    };
    let types = vec![
        Type::Void,
        int("int", 4, true),
        int("long", 8, true),
        int("char", 1, true),
        Type::Array { elem: 3, len: 16 },
        int("short", 2, true),
        Type::Struct {
            name: Some("signal_struct".into()),
            size: 64,
            members: vec![m("nr_threads", 1, 0), m("oom_score_adj", 5, 40)],
        },
        Type::Ptr { target: 6 },
        Type::Struct {
            name: Some("task_struct".into()),
            size: 256,
            members: vec![
                m("pid", 1, 8),
                m("tgid", 1, 12),
                m("signal", 7, 16),
                m("comm", 4, 24),
                m("real_parent", 9, 40),
                Member {
                    name: Some("flags".into()),
                    type_id: 20,
                    bit_offset: 48 * 8,
                    bitfield_size: Some(3),
                },
            ],
        },
        Type::Ptr { target: 8 },
        Type::FuncProto {
            ret: 0,
            params: vec![2],
        },
        Type::Func {
            name: "do_exit".into(),
            proto: 10,
        },
        Type::FuncProto {
            ret: 0,
            params: vec![9],
        },
        Type::Func {
            name: "mark_oom_victim".into(),
            proto: 12,
        },
        Type::Ptr { target: 0 },
        Type::FuncProto {
            ret: 14,
            params: vec![],
        },
        Type::Func {
            name: "kmalloc_ret".into(),
            proto: 15,
        },
        Type::FuncProto {
            ret: 0,
            params: vec![14, 9],
        },
        Type::Ptr { target: 17 },
        Type::Typedef {
            name: "btf_trace_sched_process_exit".into(),
            target: 18,
        },
        int("unsigned int", 4, false),
    ];
    let functions: BTreeSet<String> = [
        "do_exit",
        "do_exit_group",
        "mark_oom_victim",
        "kmalloc_ret",
        "untyped_fn",
        "__traceiter_sched_process_exit",
    ]
    .map(String::from)
    .into();
    let mut k = KernelInfo::new("6.1.0-test", Btf::from_types(types), functions);
    k.tracepoint_systems
        .insert("sched_process_exit".into(), "sched".into());
    k
}

fn err(text: &str) -> SpecError {
    check_text(text, &kernel(), "t").expect_err("refused")
}

fn at(e: &SpecError) -> (u32, u32) {
    let Pos { line, col } = e.pos().unwrap_or_else(|| panic!("no position: {e}"));
    (line, col)
}

#[test]
fn parses_points_filters_records_and_statements() {
    let s = parse("# c\nkretprobe:kmalloc_ret /retval == 0 || pid != -1 && comm == \"a\\\"b\"/ {\n record retval, comm as name; severity bulk; name x\n}").unwrap();
    assert_eq!(s.point, ProbePoint::Kretprobe("kmalloc_ret".into()));
    assert_eq!(s.records.len(), 2);
    assert_eq!(s.records[1].alias.as_ref().unwrap().0, "name");
    assert_eq!(s.name.as_ref().unwrap().0, "x");
    let s = parse("tracepoint:sched:sched_process_exit { record arg0->signal->oom_score_adj >> 2 & 0xf as a }").unwrap();
    assert_eq!(s.records[0].operand.base, Base::Arg(0));
    assert_eq!(s.records[0].operand.path.len(), 2);
    assert_eq!(s.records[0].operand.ops.len(), 2);
}

#[test]
fn filters_group_with_parentheses_and_negate_with_a_bang() {
    use crate::syntax::Filter;
    let s = parse("kprobe:do_exit /!(comm == \"a\" || comm == \"b\") && pid != 1/ { record pid }")
        .unwrap();
    let Some(Filter::And(left, right)) = &s.filter else {
        panic!("{:?}", s.filter)
    };
    assert!(
        matches!(&**left, Filter::Not(inner) if matches!(&**inner, Filter::Or(..))),
        "{left:?}"
    );
    assert!(matches!(&**right, Filter::Cmp { .. }), "{right:?}");
    // `!=` is still one operator, not `!` then `=`.
    let s = parse("kprobe:do_exit /pid != 1/ { record pid }").unwrap();
    assert!(matches!(s.filter, Some(Filter::Cmp { .. })));
    // Without the parentheses && binds first: a || (b && c).
    let s = parse("kprobe:do_exit /pid == 1 || pid == 2 && tid == 3/ { record pid }").unwrap();
    assert!(matches!(s.filter, Some(Filter::Or(..))), "{:?}", s.filter);
    let s = parse("kprobe:do_exit /(pid == 1 || pid == 2) && tid == 3/ { record pid }").unwrap();
    assert!(matches!(s.filter, Some(Filter::And(..))), "{:?}", s.filter);
    // The generated C keeps the grouping and the negation.
    let plan = check_text(
        "kprobe:do_exit /!(pid == 1 || pid == 2) && tid != 3/ { record pid }",
        &kernel(),
        "neg",
    )
    .unwrap();
    let c = generate(&plan, "neg.probe");
    assert!(
        c.contains("(!((vp_cond_0(regs) || vp_cond_1(regs))) && vp_cond_2(regs))"),
        "{c}"
    );
}

#[test]
fn syntax_errors_name_line_and_column() {
    for (text, line, col, what) in [
        (
            "kprobe:do_exit {\n  record pid comm;\n}",
            2,
            14,
            "expected `;`",
        ),
        (
            "uprobe:x { record pid }",
            1,
            1,
            "unknown probe type `uprobe`",
        ),
        (
            "kprobe:do_exit /comm == \"svc/ { record pid }",
            1,
            25,
            "string not closed",
        ),
        ("kprobe:do_exit { record arg9 }", 1, 25, "only arg0..arg5"),
        (
            "kprobe:do_exit { record pid } kprobe:x {}",
            1,
            31,
            "a spec holds one probe",
        ),
        (
            "kprobe:do_exit { record pid; severity loud }",
            1,
            39,
            "use urgent or bulk",
        ),
        (
            "kprobe:do_exit { record pid $ }",
            1,
            29,
            "unexpected character `$`",
        ),
        (
            "kprobe:do_exit { severity bulk; severity bulk; record pid }",
            1,
            33,
            "said twice",
        ),
        (
            "kprobe:do_exit /(pid == 1 || tid == 2/ { record pid }",
            1,
            38,
            "expected `)` to close the `(` at 1:17",
        ),
    ] {
        let e = parse(text).expect_err(text);
        assert_eq!(at(&e), (line, col), "{text}: {e}");
        assert!(e.to_string().contains(what), "{text}: {e}");
    }
}

#[test]
fn checks_functions_fields_and_types_against_the_kernel() {
    let e = err("kprobe:do_exitt { record pid }");
    assert!(
        matches!(&e, SpecError::UnknownFunction { hint, .. } if hint.contains("`do_exit`")),
        "{e}"
    );
    assert_eq!(at(&e), (1, 1));
    let e = err("tracepoint:schedd:sched_process_exit { record pid }");
    assert!(
        matches!(&e, SpecError::UnknownTracepoint { hint, .. } if hint.contains("`tracepoint:sched:sched_process_exit`")),
        "the system is checked: {e}"
    );
    let e = err("tracepoint:sched:sched_process_exi { record pid }");
    assert!(
        matches!(&e, SpecError::UnknownTracepoint { hint, .. } if hint.contains("sched_process_exit")),
        "{e}"
    );
    let e = err("kprobe:do_exit {\n record task->signal->oom_scor_adj }");
    assert!(
        matches!(&e, SpecError::UnknownField { member, known, .. } if member == "oom_scor_adj" && known.contains("oom_score_adj")),
        "{e}"
    );
    assert_eq!(at(&e), (2, 23));
    assert!(err("kprobe:do_exit { record task.pid }")
        .to_string()
        .contains("use `->pid`"));
    assert!(err("kprobe:do_exit { record task->comm->x }")
        .to_string()
        .contains("not a pointer"));
    assert!(err("kprobe:do_exit { record arg0->x }")
        .to_string()
        .contains("not a pointer"));
    // A pointer member is recorded as its address.
    let p = check_text("kprobe:do_exit { record task->signal }", &kernel(), "t").unwrap();
    assert_eq!(
        p.layout.fields[0].ty,
        FieldType::Int {
            size: 8,
            signed: false
        }
    );
    assert!(err("kprobe:do_exit { record arg0->x }")
        .to_string()
        .contains("not a pointer"));
    assert!(err("kprobe:do_exit { record task->flags }")
        .to_string()
        .contains("bitfield"));
    assert!(err("kprobe:do_exit { record arg1 }")
        .to_string()
        .contains("takes 1 argument"));
    assert!(err("kprobe:do_exit { record retval }")
        .to_string()
        .contains("kretprobe"));
    assert!(err("kretprobe:do_exit { record retval }")
        .to_string()
        .contains("returns void"));
    assert!(err("kretprobe:kmalloc_ret { record arg0 }")
        .to_string()
        .contains("arguments are gone"));
    assert!(err("kprobe:do_exit { record comm->x }")
        .to_string()
        .contains("has no members"));
}

#[test]
fn filters_are_typed() {
    let e = err("kprobe:do_exit /pid == \"svc\"/ { record pid }");
    assert!(
        matches!(&e, SpecError::FilterType { ty, .. } if ty == "s32"),
        "{e}"
    );
    assert_eq!(at(&e), (1, 17));
    let e = err("kprobe:do_exit /comm == 3/ { record pid }");
    assert!(
        matches!(&e, SpecError::FilterType { ty, .. } if ty == "char[16]"),
        "{e}"
    );
    assert!(err("kprobe:do_exit /comm < \"a\"/ { record pid }")
        .to_string()
        .contains("only with == and !="));
    assert!(
        err("kprobe:do_exit /comm == \"sixteen-chars-xx\"/ { record pid }")
            .to_string()
            .contains("at most 15")
    );
    assert!(
        err("kprobe:do_exit /task->signal->oom_score_adj > 40000/ { record pid }")
            .to_string()
            .contains("does not fit")
    );
    assert!(err("kprobe:do_exit /pid == comm/ { record pid }")
        .to_string()
        .contains("compare numbers with numbers"));
    check_text(
        "kprobe:do_exit /pid == tid && (comm != \"x\")/ { record pid }",
        &kernel(),
        "t",
    )
    .unwrap();
    // Inside parentheses and under `!`, comparisons are typed all the same.
    let e = err("kprobe:do_exit /!(pid == \"svc\")/ { record pid }");
    assert!(
        matches!(&e, SpecError::FilterType { ty, .. } if ty == "s32"),
        "{e}"
    );
    assert_eq!(at(&e), (1, 19));
    check_text(
        "kprobe:do_exit /pid == tid || comm != \"x\"/ { record pid }",
        &kernel(),
        "t",
    )
    .unwrap();
}

#[test]
fn records_are_laid_out_and_bounded() {
    let p = check_text("kprobe:mark_oom_victim { record arg0->comm as comm, arg0->signal->oom_score_adj as adj, arg0->tgid as pid, arg0 as task }", &kernel(), "Oom Victim").unwrap();
    assert_eq!(p.name, "oom_victim");
    assert_eq!(p.module, "vesper_spec_oom_victim");
    let l = &p.layout;
    let offs: Vec<(&str, u32, FieldType)> = l
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.offset, f.ty))
        .collect();
    assert_eq!(
        offs,
        [
            ("comm", 0, FieldType::Text { len: 16 }),
            (
                "adj",
                16,
                FieldType::Int {
                    size: 2,
                    signed: true
                }
            ),
            (
                "pid",
                20,
                FieldType::Int {
                    size: 4,
                    signed: true
                }
            ),
            (
                "task",
                24,
                FieldType::Int {
                    size: 8,
                    signed: false
                }
            ),
        ]
    );
    assert_eq!(l.size, 32);
    // adj: one pointer load (signal at 16), then the member at 40.
    let adj = &p.values[p.fields[1]];
    assert_eq!((adj.derefs.clone(), adj.last), (vec![16], Some(40)));

    let many: Vec<String> = (0..17).map(|i| format!("comm as c{i}")).collect();
    let e = err(&format!("kprobe:do_exit {{ record {} }}", many.join(", ")));
    assert!(
        matches!(&e, SpecError::TooLarge { field, max: 256, .. } if field == "c16"),
        "{e}"
    );
    assert!(err("kprobe:do_exit { record pid, pid }")
        .to_string()
        .contains("recorded twice"));
    assert!(err("kprobe:do_exit { record pid as type }")
        .to_string()
        .contains("event's own keys"));
    assert!(err("kprobe:do_exit { record arg0 & 1 }")
        .to_string()
        .contains("needs a name"));
    assert!(err("kprobe:do_exit { severity bulk }")
        .to_string()
        .contains("nothing is recorded"));
}

#[test]
fn severity_and_kind_follow_the_event_shapes() {
    assert!(err("kprobe:do_exit { record pid; severity urgent }")
        .to_string()
        .contains("add `kind KIND;`"));
    assert!(err("kprobe:do_exit { record pid; kind probe }")
        .to_string()
        .contains("bulk records raise no event"));
    assert!(
        err("kprobe:do_exit { record pid; severity urgent; kind decision }")
            .to_string()
            .contains("cannot come from a probe record")
    );
    let e = err("kprobe:do_exit { record pid, comm; severity urgent; kind service_exit }");
    assert!(
        e.to_string()
            .contains("tid (number), exit_code (number), signal (number), status (number)"),
        "{e}"
    );
    let p = check_text(
        "kprobe:do_exit /comm == \"svc\" && pid == tid/ { record pid, tid, arg0 as exit_code, arg0 & 0x7f as signal, arg0 >> 8 & 0xff as status, comm; severity urgent; kind service_exit }",
        &kernel(),
        "exit_svc",
    )
    .unwrap();
    assert!(p.layout.urgent);
    assert_eq!(p.layout.kind.as_deref(), Some("service_exit"));
    check_text("untyped:x { record pid }", &kernel(), "t").expect_err("bad point");
    // A function without BTF: arguments are untyped 64-bit numbers, no member walks.
    let p = check_text("kprobe:untyped_fn { record arg3 }", &kernel(), "t").unwrap();
    assert_eq!(
        p.layout.fields[0].ty,
        FieldType::Int {
            size: 8,
            signed: false
        }
    );
    assert!(err("kprobe:untyped_fn { record arg0->x }")
        .to_string()
        .contains("no type the kernel's BTF knows"));
}

#[test]
fn generated_c_matches_the_layout_and_carries_it() {
    let p = check_text(
        "kprobe:do_exit /comm == \"svc\" && task->signal->oom_score_adj >= -1000/ { record pid, comm, task->signal->oom_score_adj, arg0 >> 8 & 0xff as status; severity urgent; kind probe }",
        &kernel(),
        "gen",
    )
    .unwrap();
    let c = generate(&p, "test");
    assert!(c.contains(".symbol_name = \"do_exit\""), "{c}");
    assert!(
        c.contains("strncmp(current->comm, \"svc\", TASK_COMM_LEN) == 0"),
        "{c}"
    );
    assert!(
        c.contains("VESPER_RECORD_SPEC, VESPER_RECORD_FLAG_URGENT"),
        "{c}"
    );
    assert!(
        c.contains(&format!("MODULE_INFO(vesper_record, \"{}\");", p.layout)),
        "{c}"
    );
    for f in &p.layout.fields {
        assert!(
            c.contains(&format!(
                "offsetof(struct vp_record, {}) == {}",
                f.name, f.offset
            )),
            "{c}"
        );
    }
    assert!(c.contains(&format!("sizeof(struct vp_record) == {}", p.layout.size)));
    // The member walk: one pointer load at signal's offset, the member at its own.
    assert!(
        c.contains("copy_from_kernel_nofault(&p, (const void *)(p + 16), sizeof(p))"),
        "{c}"
    );
    assert!(
        c.contains("copy_from_kernel_nofault(&x, (const void *)(p + 40), 2)"),
        "{c}"
    );
    assert!(c.contains("return a >= (s16)(-1000LL);"), "{c}");

    let tp = check_text(
        "tracepoint:sched:sched_process_exit { record arg0->tgid as pid }",
        &kernel(),
        "tp",
    )
    .unwrap();
    assert_eq!(tp.tp_args, 1);
    let c = generate(&tp, "test");
    assert!(
        c.contains("vp_tp_probe(void *data, unsigned long a0)") && c.contains("regs.di = a0;"),
        "{c}"
    );
    let kr = check_text(
        "kretprobe:kmalloc_ret /retval == 0/ { record retval }",
        &kernel(),
        "kr",
    )
    .unwrap();
    let c = generate(&kr, "test");
    assert!(
        c.contains("register_kretprobe(&vp_krp)") && c.contains("regs_return_value(regs)"),
        "{c}"
    );
}
