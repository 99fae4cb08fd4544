//! Checking a parsed spec against one guest kernel (its symbols and BTF) and turning it
//! into a [`Plan`]: every value typed and located (member offsets from BTF), the record
//! laid out, the event kind held to its pinned payload shape.

use vesper_debug::btf::{BtfError, Type, TypeId};
use vesper_events::{shape, EventKind};
use vesper_relay::layout::{FieldLayout, FieldType, RecordLayout};
use vesper_shared_abi::{COMM_LEN, SPEC_RECORD_MAX};

use crate::error::{Pos, SpecError};
use crate::kernel::KernelInfo;
use crate::syntax::{Base, BitOp, CmpOp, Filter, Operand, ProbePoint, Rhs, Severity, Spec};

/// How a value is read when the probe fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// What it starts from.
    pub base: Base,
    /// C type of the base value when it is an argument or return value.
    pub base_ty: FieldType,
    /// Offsets of the pointers loaded on the way (each an 8-byte load at `p + off`).
    pub derefs: Vec<u64>,
    /// Offset of the final load, when the value is a member.
    pub last: Option<u64>,
    /// The value's type.
    pub ty: FieldType,
    /// Bit operations applied after the read.
    pub ops: Vec<BitOp>,
    /// As written.
    pub text: String,
}

/// A checked comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// Both.
    And(Box<Cond>, Box<Cond>),
    /// Either.
    Or(Box<Cond>, Box<Cond>),
    /// Not.
    Not(Box<Cond>),
    /// Value (index into [`Plan::values`]) against an integer.
    Int(usize, CmpOp, i128),
    /// Text value against a string.
    Str(usize, CmpOp, String),
    /// Two values.
    Values(usize, CmpOp, usize),
}

/// A spec ready for the generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The probe's name (channel name too).
    pub name: String,
    /// The kernel module's name.
    pub module: String,
    /// Where it probes.
    pub point: ProbePoint,
    /// Arguments a tracepoint passes (after its `void *` data).
    pub tp_args: usize,
    /// Every value read (filter and record).
    pub values: Vec<Value>,
    /// The filter.
    pub filter: Option<Cond>,
    /// Record fields: value index, in layout order.
    pub fields: Vec<usize>,
    /// The record layout the module carries.
    pub layout: RecordLayout,
}

/// Longest module name the kernel takes (`MODULE_NAME_LEN` - 1).
const MODULE_NAME_MAX: usize = 55;
/// Longest probe name: `vesper_spec_` + it fits a module name.
const NAME_MAX: usize = MODULE_NAME_MAX - "vesper_spec_".len();
/// Keys the daemon puts in every record event; a field may not take them.
const RESERVED: [&str; 4] = ["type", "record_seq", "latency_ns", "probe"];

fn bad_type(at: Pos, message: impl Into<String>) -> SpecError {
    SpecError::BadType {
        at,
        message: message.into(),
    }
}

fn semantics(at: Pos, message: impl Into<String>) -> SpecError {
    SpecError::Semantics {
        at,
        message: message.into(),
    }
}

fn type_word(t: FieldType) -> String {
    match t {
        FieldType::Int { size, signed } => {
            format!("{}{}", if signed { "s" } else { "u" }, u32::from(size) * 8)
        }
        FieldType::Text { len } => format!("char[{len}]"),
    }
}

/// The module name for probe `name`.
pub fn module_name(name: &str) -> String {
    let mut m = format!("vesper_spec_{name}");
    m.truncate(MODULE_NAME_MAX);
    m
}

/// A probe name from free text (a file stem): lower-case `a-z0-9_`.
pub fn sanitize_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if n.is_empty() {
        "probe".into()
    } else {
        n
    }
}

struct Checker<'k> {
    k: &'k KernelInfo,
    spec: &'k Spec,
    /// BTF prototype of the probed function or tracepoint (None: no BTF for it).
    proto: Option<(TypeId, Vec<TypeId>)>,
    values: Vec<Value>,
}

/// A type seen while walking a path: a BTF type, or a pointer to one (for `task`).
#[derive(Clone, Copy)]
enum Cur {
    Id(TypeId),
    PtrTo(TypeId),
    Plain,
}

impl<'k> Checker<'k> {
    fn btf_err(&self, at: Pos, e: BtfError) -> SpecError {
        bad_type(at, format!("the kernel's BTF: {e}"))
    }

    /// The readable type of BTF type `id`, or why it cannot be recorded.
    fn leaf(&self, id: TypeId, at: Pos, text: &str) -> Result<FieldType, SpecError> {
        let btf = &self.k.btf;
        let rid = btf.resolve(id).map_err(|e| self.btf_err(at, e))?;
        match btf.ty(rid).map_err(|e| self.btf_err(at, e))? {
            Type::Int { size, signed, .. } if [1, 2, 4, 8].contains(size) => Ok(FieldType::Int { size: *size as u8, signed: *signed }),
            Type::Enum { size, signed, .. } if [1, 2, 4, 8].contains(size) => Ok(FieldType::Int { size: *size as u8, signed: *signed }),
            Type::Ptr { .. } => Ok(FieldType::Int { size: 8, signed: false }),
            Type::Array { elem, len } => {
                let e = btf.resolve(*elem).map_err(|e| self.btf_err(at, e))?;
                match btf.ty(e).map_err(|e| self.btf_err(at, e))? {
                    Type::Int { size: 1, .. } if *len > 0 => Ok(FieldType::Text { len: *len }),
                    _ => Err(bad_type(at, format!("`{text}` is {}: only numbers, pointers and char arrays can be read; pick one element's member", btf.type_name(id)))),
                }
            }
            _ => Err(bad_type(at, format!("`{text}` is {}: only numbers, pointers and char arrays can be read; name one of its members", btf.type_name(id)))),
        }
    }

    fn aggregate(&self, id: TypeId, at: Pos, text: &str) -> Result<TypeId, SpecError> {
        let btf = &self.k.btf;
        let rid = btf.resolve(id).map_err(|e| self.btf_err(at, e))?;
        match btf.ty(rid).map_err(|e| self.btf_err(at, e))? {
            Type::Struct { .. } | Type::Union { .. } => Ok(rid),
            Type::Fwd { name, .. } => Err(bad_type(at, format!("`{text}` points to struct {name}, which the kernel's BTF only declares: its members are unknown"))),
            _ => Err(bad_type(at, format!("`{text}` is {}, not a struct or union: it has no members", btf.type_name(id)))),
        }
    }

    fn arg_type(&self, o: &Operand, n: u8) -> Result<Cur, SpecError> {
        match &self.spec.point {
            ProbePoint::Kretprobe(f) => Err(semantics(o.at, format!("`{}`: arguments are gone when {f} returns; probe its entry (kprobe:{f}) or record retval", o.text))),
            _ => match &self.proto {
                Some((_, params)) => match params.get(usize::from(n)) {
                    Some(0) | None => Err(semantics(o.at, format!("`{}`: the probe point takes {} argument(s) (arg0..arg{})", o.text, params.len(), params.len().saturating_sub(1)))),
                    Some(&id) => Ok(Cur::Id(id)),
                },
                None => Ok(Cur::Plain),
            },
        }
    }

    fn value(&mut self, o: &Operand) -> Result<usize, SpecError> {
        let btf = &self.k.btf;
        let plain = |ty| (Cur::Plain, ty);
        let (cur, base_ty) = match o.base {
            Base::Comm => plain(FieldType::Text { len: COMM_LEN }),
            Base::Pid | Base::Tid => plain(FieldType::Int {
                size: 4,
                signed: true,
            }),
            Base::Cpu => plain(FieldType::Int {
                size: 4,
                signed: false,
            }),
            Base::Task => {
                let id = btf
                    .struct_named("task_struct")
                    .ok_or_else(|| bad_type(o.at, "the kernel's BTF has no struct task_struct"))?;
                (
                    Cur::PtrTo(id),
                    FieldType::Int {
                        size: 8,
                        signed: false,
                    },
                )
            }
            Base::Arg(n) => {
                let c = self.arg_type(o, n)?;
                let ty = match c {
                    Cur::Id(id) => self.leaf(id, o.at, &o.text)?,
                    _ => FieldType::Int {
                        size: 8,
                        signed: false,
                    },
                };
                (c, ty)
            }
            Base::Retval => match (&self.spec.point, &self.proto) {
                (ProbePoint::Kretprobe(_), Some((ret, _))) if *ret == 0 => {
                    return Err(semantics(
                        o.at,
                        "the function returns void: there is no retval",
                    ))
                }
                (ProbePoint::Kretprobe(_), Some((ret, _))) => {
                    (Cur::Id(*ret), self.leaf(*ret, o.at, &o.text)?)
                }
                (ProbePoint::Kretprobe(_), None) => plain(FieldType::Int {
                    size: 8,
                    signed: true,
                }),
                _ => {
                    return Err(semantics(
                        o.at,
                        "retval exists only at a function's return: use kretprobe:FUNC",
                    ))
                }
            },
        };
        if matches!(o.base, Base::Comm | Base::Pid | Base::Tid | Base::Cpu) && !o.path.is_empty() {
            return Err(bad_type(
                o.path[0].at,
                format!("`{}` has no members: only task, argN and retval do", o.text),
            ));
        }
        let mut cur = cur;
        let mut ty = base_ty;
        let mut derefs = Vec::new();
        let mut pending: Option<u64> = None;
        let mut walked = match o.base {
            Base::Arg(n) => format!("arg{n}"),
            _ => o
                .text
                .split(['-', '.', ' '])
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        for step in &o.path {
            let struct_id = if step.arrow {
                let target = match cur {
                    Cur::PtrTo(t) if pending.is_none() => t,
                    Cur::Id(id) => {
                        let rid = btf.resolve(id).map_err(|e| self.btf_err(step.at, e))?;
                        match btf.ty(rid).map_err(|e| self.btf_err(step.at, e))? {
                            Type::Ptr { target } => *target,
                            _ => return Err(bad_type(step.at, format!("`{walked}` is {}, not a pointer: use `.{}`", btf.type_name(id), step.member))),
                        }
                    }
                    _ => return Err(bad_type(step.at, format!("`{walked}` has no type the kernel's BTF knows: `->` needs a typed pointer"))),
                };
                if let Some(off) = pending.take() {
                    derefs.push(off);
                }
                pending = Some(0);
                self.aggregate(target, step.at, &walked)?
            } else {
                match (cur, pending) {
                    (Cur::Id(id), Some(_)) => self.aggregate(id, step.at, &walked)?,
                    _ => {
                        return Err(bad_type(
                            step.at,
                            format!(
                                "`{walked}` is a pointer or a number: use `->{}`",
                                step.member
                            ),
                        ))
                    }
                }
            };
            let m = btf.member(struct_id, &step.member).map_err(|e| match e {
                BtfError::NoMember {
                    type_name,
                    member,
                    known,
                } => SpecError::UnknownField {
                    at: step.at,
                    type_name,
                    member,
                    known: known.join(", "),
                },
                e => self.btf_err(step.at, e),
            })?;
            walked.push_str(if step.arrow { "->" } else { "." });
            walked.push_str(&step.member);
            if m.bitfield_size.is_some() {
                return Err(bad_type(
                    step.at,
                    format!("`{walked}` is a bitfield: bitfields cannot be read by a spec yet"),
                ));
            }
            pending = Some(pending.unwrap_or(0) + m.bit_offset / 8);
            cur = Cur::Id(m.type_id);
        }
        if pending.is_some() {
            if let Cur::Id(id) = cur {
                ty = self.leaf(id, o.at, &o.text)?;
            }
        }
        if !o.ops.is_empty() && !matches!(ty, FieldType::Int { .. }) {
            return Err(bad_type(
                o.at,
                format!(
                    "`{}`: bit operations need a number, and this is {}",
                    o.text,
                    type_word(ty)
                ),
            ));
        }
        self.values.push(Value {
            base: o.base,
            base_ty,
            derefs,
            last: pending,
            ty,
            ops: o.ops.clone(),
            text: o.text.clone(),
        });
        Ok(self.values.len() - 1)
    }

    fn cond(&mut self, f: &Filter) -> Result<Cond, SpecError> {
        Ok(match f {
            Filter::And(a, b) => Cond::And(Box::new(self.cond(a)?), Box::new(self.cond(b)?)),
            Filter::Or(a, b) => Cond::Or(Box::new(self.cond(a)?), Box::new(self.cond(b)?)),
            Filter::Not(a) => Cond::Not(Box::new(self.cond(a)?)),
            Filter::Cmp { lhs, op, rhs } => {
                let v = self.value(lhs)?;
                let ty = self.values[v].ty;
                let mismatch = |other: &str, advice: &str| SpecError::FilterType {
                    at: lhs.at,
                    operand: lhs.text.clone(),
                    ty: type_word(ty),
                    other: other.to_string(),
                    advice: advice.to_string(),
                };
                match (rhs, ty) {
                    (Rhs::Str(s, at), FieldType::Text { len }) => {
                        if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                            return Err(semantics(*at, "strings compare only with == and !="));
                        }
                        if s.len() >= len as usize {
                            return Err(semantics(*at, format!("{s:?} is {} bytes but `{}` holds at most {} (and the kernel cuts task names the same way): shorten it", s.len(), lhs.text, len - 1)));
                        }
                        Cond::Str(v, *op, s.clone())
                    }
                    (Rhs::Str(..), FieldType::Int { .. }) => {
                        return Err(mismatch("a string", "compare it with a number"))
                    }
                    (Rhs::Int(n, at), FieldType::Int { size, signed }) => {
                        let bits = u32::from(size) * 8;
                        let (lo, hi) = if signed {
                            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
                        } else {
                            (0, (1i128 << bits) - 1)
                        };
                        if *n < lo || *n > hi {
                            return Err(semantics(*at, format!("{n} does not fit `{}` ({}, {lo}..={hi}): the comparison could never be true", lhs.text, type_word(ty))));
                        }
                        Cond::Int(v, *op, *n)
                    }
                    (Rhs::Int(..), FieldType::Text { .. }) => {
                        return Err(mismatch(
                            "a number",
                            &format!("compare it with a string, e.g. {} == \"svc\"", lhs.text),
                        ))
                    }
                    (Rhs::Operand(o), _) => {
                        let w = self.value(o)?;
                        let wty = self.values[w].ty;
                        match (ty, wty) {
                            (FieldType::Int { .. }, FieldType::Int { .. }) => {}
                            (FieldType::Text { .. }, FieldType::Text { .. })
                                if matches!(op, CmpOp::Eq | CmpOp::Ne) => {}
                            _ => return Err(mismatch(
                                &format!("`{}` ({})", o.text, type_word(wty)),
                                "compare numbers with numbers and strings with strings (== or !=)",
                            )),
                        }
                        Cond::Values(v, *op, w)
                    }
                }
            }
        })
    }
}

fn proto_of(k: &KernelInfo, func: TypeId) -> Option<(TypeId, Vec<TypeId>)> {
    let proto = match k.btf.ty(func).ok()? {
        Type::Func { proto, .. } => *proto,
        Type::Ptr { target } => *target,
        _ => return None,
    };
    let proto = k.btf.resolve(proto).ok()?;
    match k.btf.ty(proto).ok()? {
        Type::FuncProto { ret, params } => Some((*ret, params.clone())),
        _ => None,
    }
}

/// Checks `spec` against kernel `k`; `default_name` names the probe when the spec does
/// not (the file's stem).
pub fn check(spec: &Spec, k: &KernelInfo, default_name: &str) -> Result<Plan, SpecError> {
    let mut tp_args = 0;
    let proto = match &spec.point {
        ProbePoint::Kprobe(f) | ProbePoint::Kretprobe(f) => {
            if !k.functions.contains(f) {
                return Err(SpecError::UnknownFunction {
                    at: spec.point_at,
                    name: f.clone(),
                    release: k.release.clone(),
                    hint: k.near(f, k.functions.iter().cloned()),
                });
            }
            k.func_types.get(f).and_then(|&id| proto_of(k, id))
        }
        ProbePoint::Tracepoint { system, event } => {
            // Every tracepoint has a `btf_trace_EVENT` typedef: a pointer to its
            // probe prototype, `void (*)(void *, ARGS...)`.
            let id = k.btf.type_named(&format!("btf_trace_{event}"));
            let tp = id
                .and_then(|id| k.btf.resolve(id).ok())
                .and_then(|id| proto_of(k, id));
            let Some((ret, params)) = tp.filter(|(_, p)| !p.is_empty()) else {
                let names = k
                    .functions
                    .iter()
                    .filter_map(|f| f.strip_prefix("__traceiter_").map(str::to_string));
                return Err(SpecError::UnknownTracepoint {
                    at: spec.point_at,
                    name: format!("{system}:{event}"),
                    release: k.release.clone(),
                    hint: k.near(event, names),
                });
            };
            if params.len() > 7 {
                return Err(semantics(
                    spec.point_at,
                    format!(
                        "tracepoint {event} passes {} arguments; a spec reads at most 6",
                        params.len() - 1
                    ),
                ));
            }
            if let Some(actual) = k.tracepoint_system(event).filter(|s| s != system) {
                return Err(SpecError::UnknownTracepoint {
                    at: spec.point_at,
                    name: format!("{system}:{event}"),
                    release: k.release.clone(),
                    hint: format!(" (it is `tracepoint:{actual}:{event}`)"),
                });
            }
            tp_args = params.len() - 1;
            Some((ret, params[1..].to_vec()))
        }
    };
    let mut c = Checker {
        k,
        spec,
        proto,
        values: Vec::new(),
    };
    let filter = spec.filter.as_ref().map(|f| c.cond(f)).transpose()?;

    // The record: fields in order, C's natural alignment, within SPEC_RECORD_MAX.
    if spec.records.is_empty() {
        return Err(semantics(
            spec.body_at,
            "nothing is recorded: add `record VALUE, ...;` (e.g. record pid, comm)",
        ));
    }
    let (name, name_at) = spec.name.clone().unwrap_or_else(|| {
        let mut n = sanitize_name(default_name);
        n.truncate(NAME_MAX);
        (n, spec.body_at)
    });
    if name.len() > NAME_MAX {
        return Err(semantics(name_at, format!("probe name `{name}` is longer than {NAME_MAX} characters (the module is vesper_spec_NAME, at most {MODULE_NAME_MAX})")));
    }
    let mut fields = Vec::new();
    let mut layout = RecordLayout {
        probe: name.clone(),
        size: 0,
        urgent: false,
        kind: None,
        fields: Vec::new(),
    };
    let (mut end, mut align) = (0u32, 1u32);
    for item in &spec.records {
        let v = c.value(&item.operand)?;
        let value = &c.values[v];
        let (fname, at) = match &item.alias {
            Some((n, at)) => (n.clone(), *at),
            None if !value.ops.is_empty() => {
                return Err(semantics(
                    item.operand.at,
                    format!("`{}` needs a name: add `as NAME`", item.operand.text),
                ))
            }
            None => (
                item.operand
                    .path
                    .last()
                    .map_or_else(|| item.operand.text.clone(), |s| s.member.clone()),
                item.operand.at,
            ),
        };
        if RESERVED.contains(&fname.as_str()) {
            return Err(semantics(at, format!("field name `{fname}` is one of the event's own keys ({}): rename it with `as NAME`", RESERVED.join(", "))));
        }
        if fname.len() > vesper_relay::layout::MAX_NAME {
            return Err(semantics(
                at,
                format!(
                    "field name `{fname}` is longer than {} characters",
                    vesper_relay::layout::MAX_NAME
                ),
            ));
        }
        if layout.fields.iter().any(|f| f.name == fname) {
            return Err(semantics(
                at,
                format!("field `{fname}` recorded twice: rename one with `as NAME`"),
            ));
        }
        let ty = value.ty;
        let offset = end.div_ceil(ty.align()) * ty.align();
        end = offset + ty.size();
        align = align.max(ty.align());
        if end > SPEC_RECORD_MAX {
            return Err(SpecError::TooLarge {
                at,
                field: fname,
                size: end.div_ceil(align) * align,
                max: SPEC_RECORD_MAX,
            });
        }
        layout.fields.push(FieldLayout {
            name: fname,
            offset,
            ty,
        });
        fields.push(v);
    }
    layout.size = end.div_ceil(align) * align;

    // Severity and the event kind, held to the kind's pinned payload shape.
    let severity = spec.severity.map_or(Severity::Bulk, |(s, _)| s);
    layout.urgent = severity == Severity::Urgent;
    match (&spec.kind, spec.severity) {
        (None, Some((Severity::Urgent, at))) => return Err(semantics(
            at,
            "urgent records become events: add `kind KIND;` (service_exit, oom, panic or probe)",
        )),
        (Some((_, at)), s) if s.is_none_or(|(s, _)| s == Severity::Bulk) => {
            return Err(semantics(
                *at,
                "bulk records raise no event: add `severity urgent;` or drop `kind`",
            ))
        }
        (Some((kind, at)), _) => {
            let k = match kind.parse::<EventKind>() {
                Ok(k @ (EventKind::ServiceExit | EventKind::Oom | EventKind::Panic | EventKind::Probe)) => k,
                _ => return Err(semantics(*at, format!("kind `{kind}` cannot come from a probe record: use service_exit, oom, panic or probe"))),
            };
            let mut missing = Vec::new();
            for (key, json) in shape::required(k) {
                if ["type", "cpu", "record_seq", "latency_ns", "probe"].contains(&key) {
                    continue;
                }
                let want_text = json == shape::JsonType::Str;
                let ok = layout
                    .fields
                    .iter()
                    .any(|f| f.name == key && matches!(f.ty, FieldType::Text { .. }) == want_text);
                if !ok {
                    missing.push(format!(
                        "{key} ({})",
                        if want_text { "text" } else { "number" }
                    ));
                }
            }
            if !missing.is_empty() {
                return Err(semantics(
                    *at,
                    format!(
                        "kind {kind} events carry {}: record them (`… as NAME` renames a value)",
                        missing.join(", ")
                    ),
                ));
            }
            layout.kind = Some(kind.clone());
        }
        _ => {}
    }
    Ok(Plan {
        module: module_name(&name),
        name,
        point: spec.point.clone(),
        tp_args,
        values: c.values,
        filter,
        fields,
        layout,
    })
}
