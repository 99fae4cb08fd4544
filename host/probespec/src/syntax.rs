//! The spec language: tokens and the parser. A spec is one probe, bpftrace-like:
//!
//! ```text
//! # comments run from '#' to the end of the line
//! kprobe:do_exit /comm == "svc" && pid == tid/ {
//!     record pid, tid, comm, arg0 as exit_code, arg0 & 0x7f as signal;
//!     severity urgent;
//!     kind service_exit;
//! }
//! ```
//!
//! Probe points: `kprobe:FUNC`, `kretprobe:FUNC`, `tracepoint:SYSTEM:EVENT`. Operands:
//! `comm`, `pid` (thread-group id), `tid`, `cpu`, `argN`, `retval` (kretprobe), `task`
//! (the current task) followed by `->member` / `.member` steps, then optional `>> N`
//! and `& MASK`. Filters: comparisons (`== != < <= > >=`) joined by `&&` (binding
//! first), `||`, `!` and parentheses. Statements: `record ITEM [as NAME], ...`,
//! `severity urgent|bulk`, `kind KIND`, `name NAME`.

use crate::error::{Pos, SpecError};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Int(u64),
    Str(String),
    Punct(&'static str),
    Eof,
}

const PUNCTS: [&str; 22] = [
    "==", "!=", "<=", ">=", "&&", "||", "->", ">>", ":", "/", "{", "}", ";", ",", "<", ">", ".",
    "&", "-", "(", ")", "!",
];

fn syntax(at: Pos, message: impl Into<String>) -> SpecError {
    SpecError::Syntax {
        at,
        message: message.into(),
    }
}

pub(crate) fn lex(src: &str) -> Result<Vec<(Tok, Pos)>, SpecError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    while i < chars.len() {
        let c = chars[i];
        let at = Pos { line, col };
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            col += 1;
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), at));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let text: String = chars[start..i].iter().filter(|&&c| c != '_').collect();
            let v = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse::<u64>(),
            }
            .map_err(|_| {
                syntax(
                    at,
                    format!("`{text}` is not a number (decimal or 0x hex, at most 64 bits)"),
                )
            })?;
            out.push((Tok::Int(v), at));
        } else if c == '"' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None | Some('\n') => {
                        return Err(syntax(
                            at,
                            "string not closed: add `\"` before the end of the line",
                        ))
                    }
                    Some('"') => break,
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            _ => {
                                return Err(syntax(
                                    Pos {
                                        line,
                                        col: col + (i - start) as u32,
                                    },
                                    "only \\\" and \\\\ escapes are known in strings",
                                ))
                            }
                        }
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push((Tok::Str(s), at));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(**p)) else {
                return Err(syntax(at, format!("unexpected character `{c}`")));
            };
            i += p.len();
            out.push((Tok::Punct(p), at));
        }
        col += (i - start) as u32;
    }
    out.push((Tok::Eof, Pos { line, col }));
    Ok(out)
}

/// Where the probe sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbePoint {
    /// Entry of a kernel function.
    Kprobe(String),
    /// Return of a kernel function.
    Kretprobe(String),
    /// A static tracepoint.
    Tracepoint {
        /// Its system (`sched`).
        system: String,
        /// Its event (`sched_process_exit`).
        event: String,
    },
}

/// What an operand starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// `comm`: the current task's name.
    Comm,
    /// `pid`: its thread-group id.
    Pid,
    /// `tid`: its thread id.
    Tid,
    /// `cpu`: the CPU the probe runs on.
    Cpu,
    /// `argN`.
    Arg(u8),
    /// `retval` (kretprobe).
    Retval,
    /// `task`: the current task (`struct task_struct *`).
    Task,
}

/// One `->member` or `.member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `->` (through a pointer) rather than `.`.
    pub arrow: bool,
    /// Member name.
    pub member: String,
    /// Where the member name is.
    pub at: Pos,
}

/// A bit operation applied to an integer operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOp {
    /// `>> n`.
    Shr(u32),
    /// `& mask`.
    And(u64),
}

/// A value read when the probe fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operand {
    /// Where it starts.
    pub base: Base,
    /// Member steps.
    pub path: Vec<Step>,
    /// Bit operations, in order.
    pub ops: Vec<BitOp>,
    /// Its text as written (for messages).
    pub text: String,
    /// Where it starts in the spec.
    pub at: Pos,
}

/// The right side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rhs {
    /// An integer literal.
    Int(i128, Pos),
    /// A string literal.
    Str(String, Pos),
    /// Another operand.
    Operand(Operand),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// Its C spelling.
    pub fn c(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Both.
    And(Box<Filter>, Box<Filter>),
    /// Either.
    Or(Box<Filter>, Box<Filter>),
    /// Not (`!`).
    Not(Box<Filter>),
    /// One comparison.
    Cmp {
        /// Left side.
        lhs: Operand,
        /// Operator.
        op: CmpOp,
        /// Right side.
        rhs: Rhs,
    },
}

/// One recorded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What is read.
    pub operand: Operand,
    /// `as NAME`.
    pub alias: Option<(String, Pos)>,
}

/// Record severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A failure signal: the host is rung at once and an event is published.
    Urgent,
    /// Only a record, read at the next sub-buffer switch.
    Bulk,
}

/// A parsed spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Where it probes.
    pub point: ProbePoint,
    /// Where the probe point is written.
    pub point_at: Pos,
    /// `/…/`.
    pub filter: Option<Filter>,
    /// What each hit records.
    pub records: Vec<Item>,
    /// `severity`.
    pub severity: Option<(Severity, Pos)>,
    /// `kind`.
    pub kind: Option<(String, Pos)>,
    /// `name`.
    pub name: Option<(String, Pos)>,
    /// Where the body starts (`{`).
    pub body_at: Pos,
}

struct Parser {
    toks: Vec<(Tok, Pos)>,
    i: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Int(v) => format!("number {v}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::Eof => "the end of the spec".into(),
    }
}

impl Parser {
    fn peek(&self) -> &(Tok, Pos) {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }
    fn next(&mut self) -> (Tok, Pos) {
        let t = self.peek().clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }
    fn is(&self, p: &str) -> bool {
        matches!(&self.peek().0, Tok::Punct(q) if *q == p)
    }
    fn expect(&mut self, p: &str, what: &str) -> Result<Pos, SpecError> {
        let (t, at) = self.next();
        match t {
            Tok::Punct(q) if q == p => Ok(at),
            t => Err(syntax(
                at,
                format!("expected `{p}` {what}, found {}", describe(&t)),
            )),
        }
    }
    fn ident(&mut self, what: &str) -> Result<(String, Pos), SpecError> {
        match self.next() {
            (Tok::Ident(s), at) => Ok((s, at)),
            (t, at) => Err(syntax(
                at,
                format!("expected {what}, found {}", describe(&t)),
            )),
        }
    }

    fn spec(&mut self) -> Result<Spec, SpecError> {
        let (kind, point_at) =
            self.ident("a probe point (kprobe:FUNC, kretprobe:FUNC or tracepoint:SYSTEM:EVENT)")?;
        self.expect(":", &format!("after `{kind}`"))?;
        let point = match kind.as_str() {
            "kprobe" | "kretprobe" => {
                let (f, _) = self.ident("a kernel function name")?;
                if kind == "kprobe" {
                    ProbePoint::Kprobe(f)
                } else {
                    ProbePoint::Kretprobe(f)
                }
            }
            "tracepoint" => {
                let (system, _) = self.ident("a tracepoint system (e.g. sched)")?;
                self.expect(":", "between the tracepoint's system and event")?;
                let (event, _) = self.ident("a tracepoint event (e.g. sched_process_exit)")?;
                ProbePoint::Tracepoint { system, event }
            }
            other => {
                return Err(syntax(
                    point_at,
                    format!("unknown probe type `{other}`: use kprobe, kretprobe or tracepoint"),
                ))
            }
        };
        let mut filter = None;
        if self.is("/") {
            self.next();
            filter = Some(self.or()?);
            self.expect("/", "to close the filter")?;
        }
        let body_at = self.expect("{", "to open the probe's body")?;
        let mut spec = Spec {
            point,
            point_at,
            filter,
            records: Vec::new(),
            severity: None,
            kind: None,
            name: None,
            body_at,
        };
        loop {
            if self.is("}") {
                self.next();
                break;
            }
            if self.is(";") {
                self.next();
                continue;
            }
            self.statement(&mut spec)?;
            if !self.is("}") {
                self.expect(";", "after a statement")?;
            }
        }
        match self.next() {
            (Tok::Eof, _) => Ok(spec),
            (t, at) => Err(syntax(
                at,
                format!(
                    "{} after the probe's body: a spec holds one probe",
                    describe(&t)
                ),
            )),
        }
    }

    fn statement(&mut self, spec: &mut Spec) -> Result<(), SpecError> {
        let (word, at) = self.ident("a statement (record, severity, kind or name)")?;
        let twice = |what: &str| {
            Err(SpecError::Semantics {
                at,
                message: format!("`{what}` said twice: keep one"),
            })
        };
        match word.as_str() {
            "record" => loop {
                let operand = self.operand()?;
                let alias = if matches!(&self.peek().0, Tok::Ident(s) if s == "as") {
                    self.next();
                    Some(self.ident("a field name after `as`")?)
                } else {
                    None
                };
                spec.records.push(Item { operand, alias });
                if !self.is(",") {
                    return Ok(());
                }
                self.next();
            },
            "severity" => {
                let (s, sat) = self.ident("urgent or bulk")?;
                let sev = match s.as_str() {
                    "urgent" => Severity::Urgent,
                    "bulk" => Severity::Bulk,
                    _ => return Err(syntax(sat, format!("severity `{s}`: use urgent or bulk"))),
                };
                if spec.severity.is_some() {
                    return twice("severity");
                }
                spec.severity = Some((sev, at));
                Ok(())
            }
            "kind" => {
                let k = self.ident("an event kind (service_exit, oom, panic or probe)")?;
                if spec.kind.is_some() {
                    return twice("kind");
                }
                spec.kind = Some(k);
                Ok(())
            }
            "name" => {
                let n = self.ident("a probe name")?;
                if spec.name.is_some() {
                    return twice("name");
                }
                spec.name = Some(n);
                Ok(())
            }
            other => Err(syntax(
                at,
                format!("unknown statement `{other}`: use record, severity, kind or name"),
            )),
        }
    }

    fn or(&mut self) -> Result<Filter, SpecError> {
        let mut f = self.and()?;
        while self.is("||") {
            self.next();
            f = Filter::Or(Box::new(f), Box::new(self.and()?));
        }
        Ok(f)
    }

    fn and(&mut self) -> Result<Filter, SpecError> {
        let mut f = self.unary()?;
        while self.is("&&") {
            self.next();
            f = Filter::And(Box::new(f), Box::new(self.unary()?));
        }
        Ok(f)
    }

    /// `!` FILTER, `(` FILTER `)`, or one comparison.
    fn unary(&mut self) -> Result<Filter, SpecError> {
        if self.is("!") {
            self.next();
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.is("(") {
            let (_, open) = self.next();
            let f = self.or()?;
            return match self.next() {
                (Tok::Punct(")"), _) => Ok(f),
                (t, at) => Err(syntax(
                    at,
                    format!(
                        "expected `)` to close the `(` at {}:{}, found {}",
                        open.line,
                        open.col,
                        describe(&t)
                    ),
                )),
            };
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Filter, SpecError> {
        let lhs = self.operand()?;
        let (t, at) = self.next();
        let op = match t {
            Tok::Punct("==") => CmpOp::Eq,
            Tok::Punct("!=") => CmpOp::Ne,
            Tok::Punct("<") => CmpOp::Lt,
            Tok::Punct("<=") => CmpOp::Le,
            Tok::Punct(">") => CmpOp::Gt,
            Tok::Punct(">=") => CmpOp::Ge,
            t => {
                return Err(syntax(
                    at,
                    format!(
                        "expected a comparison (== != < <= > >=) after `{}`, found {}",
                        lhs.text,
                        describe(&t)
                    ),
                ))
            }
        };
        let rhs = match self.peek().clone() {
            (Tok::Int(v), at) => {
                self.next();
                Rhs::Int(i128::from(v), at)
            }
            (Tok::Punct("-"), at) => {
                self.next();
                match self.next() {
                    (Tok::Int(v), _) => Rhs::Int(-i128::from(v), at),
                    (t, at) => {
                        return Err(syntax(
                            at,
                            format!("expected a number after `-`, found {}", describe(&t)),
                        ))
                    }
                }
            }
            (Tok::Str(s), at) => {
                self.next();
                Rhs::Str(s, at)
            }
            _ => Rhs::Operand(self.operand()?),
        };
        Ok(Filter::Cmp { lhs, op, rhs })
    }

    fn operand(&mut self) -> Result<Operand, SpecError> {
        let (name, at) = self.ident("a value (comm, pid, tid, cpu, argN, retval or task->…)")?;
        let base = match name.as_str() {
            "comm" => Base::Comm,
            "pid" => Base::Pid,
            "tid" => Base::Tid,
            "cpu" => Base::Cpu,
            "retval" => Base::Retval,
            "task" | "curtask" => Base::Task,
            n => match n.strip_prefix("arg").and_then(|d| d.parse::<u8>().ok()) {
                Some(k) if k < 6 => Base::Arg(k),
                Some(_) => return Err(syntax(at, format!("`{n}`: only arg0..arg5 are passed in registers"))),
                None => {
                    return Err(syntax(
                        at,
                        format!("unknown value `{n}`: use comm, pid, tid, cpu, argN, retval or task->member"),
                    ))
                }
            },
        };
        let mut text = name;
        let mut path = Vec::new();
        while self.is("->") || self.is(".") {
            let arrow = self.is("->");
            self.next();
            let (member, mat) = self.ident("a member name")?;
            text.push_str(if arrow { "->" } else { "." });
            text.push_str(&member);
            path.push(Step {
                arrow,
                member,
                at: mat,
            });
        }
        let mut ops = Vec::new();
        while self.is(">>") || self.is("&") {
            let shr = self.is(">>");
            self.next();
            let (v, vat) = match self.next() {
                (Tok::Int(v), at) => (v, at),
                (t, at) => {
                    return Err(syntax(
                        at,
                        format!("expected a number, found {}", describe(&t)),
                    ))
                }
            };
            if shr {
                if v >= 64 {
                    return Err(syntax(vat, format!("shift by {v}: at most 63")));
                }
                text.push_str(&format!(" >> {v}"));
                ops.push(BitOp::Shr(v as u32));
            } else {
                text.push_str(&format!(" & {v:#x}"));
                ops.push(BitOp::And(v));
            }
        }
        Ok(Operand {
            base,
            path,
            ops,
            text,
            at,
        })
    }
}

/// Parses a spec's text.
pub fn parse(src: &str) -> Result<Spec, SpecError> {
    let toks = lex(src)?;
    Parser { toks, i: 0 }.spec()
}
