//! Generates the C header the guest module includes.

use alloc::format;
use alloc::string::String;

use crate::{ALL_CONSTS, ALL_STRUCTS, OP_NAMES};

/// The C header for the guest module: every ABI constant as `VESPER_<NAME>`, the
/// commands' names (`vesper_op_name`), and every wire struct as `struct vesper_<name>`, with size and offset assertions so the C
/// compiler refuses a header that does not match its own layout rules.
pub fn c_header() -> String {
    let mut out = String::new();
    out.push_str(
        "/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */\n\
         /*\n * Vesper shared-region ABI.\n *\n\
         \x20* GENERATED from shared-abi/src/lib.rs by `cargo run -p vesper-abi-header`.\n\
         \x20* Do not edit: a test fails when this file differs from the Rust definitions.\n */\n\
         #ifndef VESPER_ABI_H\n#define VESPER_ABI_H\n\n\
         #ifdef __KERNEL__\n#include <linux/types.h>\n#include <linux/stddef.h>\n\
         #else\n#include <stdint.h>\n#include <stddef.h>\n#endif\n\n",
    );
    for (name, value, doc) in ALL_CONSTS {
        let suffix = if *value > u32::MAX as i128 {
            "ULL"
        } else {
            "U"
        };
        out.push_str(&format!(
            "/* {} */\n#define VESPER_{} 0x{:x}{}\n",
            c_comment(doc),
            name,
            value,
            suffix
        ));
    }
    out.push_str(
        "\n/* The name of command VESPER_OP_*, as logs print it (from OP_NAMES). */\n\
         static inline const char *vesper_op_name(unsigned int op)\n{\n\tswitch (op) {\n",
    );
    for (op, name) in OP_NAMES {
        out.push_str(&format!("\tcase {op}: return \"{name}\";\n"));
    }
    out.push_str("\tdefault: return \"unknown\";\n\t}\n}\n");
    for (c_name, doc, fields, size) in ALL_STRUCTS {
        out.push_str(&format!(
            "\n/* {} */\nstruct {} {{\n",
            c_comment(doc),
            c_name
        ));
        for f in fields.iter() {
            if f.array_len == 0 {
                out.push_str(&format!("\t{} {};\n", f.c_type, f.name));
            } else {
                out.push_str(&format!("\t{} {}[{}];\n", f.c_type, f.name, f.array_len));
            }
        }
        out.push_str("};\n");
        out.push_str(&format!(
            "_Static_assert(sizeof(struct {c_name}) == {size}, \"{c_name} size\");\n"
        ));
        for f in fields.iter() {
            out.push_str(&format!(
                "_Static_assert(offsetof(struct {c_name}, {}) == {}, \"{c_name}.{}\");\n",
                f.name, f.offset, f.name
            ));
        }
    }
    out.push_str("\n#endif /* VESPER_ABI_H */\n");
    out
}

/// A doc comment as the body of a C comment: lines joined, no `*/` inside.
fn c_comment(doc: &str) -> String {
    let text: alloc::vec::Vec<&str> = doc
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    text.join("\n * ").replace("*/", "* /")
}
