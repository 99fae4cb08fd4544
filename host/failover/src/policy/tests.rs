use super::*;
use vesper_toml_located::TomlFileError;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy.toml");

const HOST: &str = "[host]\nmax_guests = 4\nmax_memory_mib = 4096\n";

const GUESTS: &str = r#"
[[guest]]
name = "web1"
memory_mib = 512

[[guest]]
name = "web2"
memory_mib = 512

[[group]]
name = "web"
primary = "web1"
standbys = ["web2"]
"#;

/// Host, guests and group, then `rest`.
fn with(rest: &str) -> String {
    format!("{HOST}{GUESTS}{rest}")
}

fn err(text: &str) -> PolicyError {
    match Policy::from_toml(text) {
        Ok(p) => panic!("accepted:\n{text}\n{}", p.summary()),
        Err(e) => e,
    }
}

/// Asserts the message names every word in `words`.
fn says(e: &PolicyError, words: &[&str]) {
    let m = e.to_string();
    for w in words {
        assert!(m.contains(w), "{m:?} lacks {w:?}");
    }
}

#[test]
fn the_example_policy_passes_the_check() {
    let summary = check(Path::new(EXAMPLE)).unwrap();
    assert!(
        summary.starts_with("policy OK: 4 guests, 1 group, 6 rules"),
        "{summary}"
    );
    assert!(
        summary.contains("group web: primary web1, standbys web2, web3"),
        "{summary}"
    );
    assert!(
        summary
            .contains("rule 1: on service_exit where comm = \"svc\" in group web -> start_standby"),
        "{summary}"
    );
    let p = Policy::load(Path::new(EXAMPLE)).unwrap();
    let web1 = p.guest("web1").unwrap();
    assert_eq!((web1.cpus, web1.mode.as_str()), (1, "hand"));
    assert_eq!(web1.probes[0].module, "vesper_exit_probe");
    assert_eq!(web1.probes[0].params, ["watch_comm=svc"]);
    assert!(web1.probes[1].params.is_empty());
    assert_eq!(p.guest("db1").unwrap().mode, DEFAULT_MODE);
    assert_eq!(p.guest("web3").unwrap().cpus, 2);
    assert_eq!(p.group_of("web3").unwrap().name, "web");
    assert!(p.group_of("db1").is_none());
    assert_eq!(
        p.rules()[3].action,
        RuleAction::Hook {
            command: vec!["/usr/bin/logger".into(), "-t".into(), "vesper".into()],
            timeout_secs: 5
        }
    );
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let p = Policy::from_toml(&with(
        "[[rule]]\non = \"panic\"\naction = \"hook\"\ncommand = [\"/bin/true\"]\n",
    ))
    .unwrap();
    assert_eq!(p.limits(), Limits::default());
    assert_eq!(
        p.rules()[0].action,
        RuleAction::Hook {
            command: vec!["/bin/true".into()],
            timeout_secs: DEFAULT_HOOK_TIMEOUT_SECS
        }
    );
    assert_eq!(p.guest("web1").unwrap().cpus, 1);
    assert!(p
        .summary()
        .contains("of any guest -> hook `/bin/true` (timeout 10 s)"));
}

#[test]
fn where_accepts_strings_ints_bools_and_nested_tables() {
    let p = Policy::from_toml(&with(
        "[[rule]]\non = \"service_exit\"\nwhere = { comm = \"svc\", signal = 9, core = false, record = { pid = 7 } }\naction = \"restart\"\n",
    ))
    .unwrap();
    let conds: Vec<String> = p.rules()[0]
        .conditions
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        conds,
        [
            "comm = \"svc\"",
            "core = false",
            "record.pid = 7",
            "signal = 9"
        ]
    );
}

#[test]
fn toml_syntax_errors_say_where() {
    let e = err(&format!("{HOST}[[guest]\nname = \"x\"\n"));
    assert!(
        matches!(e, PolicyError::File(TomlFileError::Syntax { .. })),
        "{e:?}"
    );
    says(&e, &["line 4"]);
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"x\"\nmemory_mib = \"lots\"\n"
    ));
    assert!(
        matches!(e, PolicyError::File(TomlFileError::Syntax { .. })),
        "{e:?}"
    );
    says(&e, &["line 6", "string"]);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let e = err(&with(
        "[[rule]]\non = \"panic\"\naction = \"restart\"\nactoin = \"x\"\n",
    ));
    assert!(
        matches!(&e, PolicyError::File(TomlFileError::UnknownKey { key, .. }) if key == "actoin"),
        "{e:?}"
    );
    says(&e, &["actoin", "`action`", "line"]);
    let e = err(&format!("{HOST}memory = 1\n"));
    assert!(
        matches!(&e, PolicyError::File(TomlFileError::UnknownKey { key, .. }) if key == "memory"),
        "{e:?}"
    );
    let e = err("[host]\nmax_guests = 1\nmax_memory_mib = 1\nmax_cpus = 2\n");
    assert!(
        matches!(&e, PolicyError::File(TomlFileError::UnknownKey { key, .. }) if key == "max_cpus"),
        "{e:?}"
    );
}

#[test]
fn missing_keys_and_host_are_named() {
    let e = err(&format!("{HOST}[[guest]]\nname = \"x\"\n"));
    assert!(
        matches!(&e, PolicyError::File(TomlFileError::MissingKey { key, .. }) if key == "memory_mib"),
        "{e:?}"
    );
    says(&e, &["memory_mib"]);
    let e = err(GUESTS);
    assert!(matches!(e, PolicyError::MissingHost { .. }), "{e:?}");
    says(&e, &["[host]", "max_guests"]);
}

#[test]
fn unknown_event_kinds_list_the_known_ones() {
    let e = err(&with("[[rule]]\non = \"explode\"\naction = \"restart\"\n"));
    assert!(
        matches!(&e, PolicyError::UnknownKind { kind, rule: 1, .. } if kind == "explode"),
        "{e:?}"
    );
    says(
        &e,
        &[
            "rule 1",
            "explode",
            "service_exit",
            "guest_panicked",
            "line 18",
        ],
    );
}

#[test]
fn decision_and_guest_up_cannot_start_rules() {
    for kind in ["decision", "guest_up"] {
        let e = err(&with(&format!(
            "[[rule]]\non = \"{kind}\"\naction = \"restart\"\n"
        )));
        assert!(matches!(e, PolicyError::KindNotAllowed { .. }), "{e:?}");
        says(&e, &[kind, "can't start a rule"]);
    }
}

#[test]
fn unknown_actions_list_the_actions() {
    let e = err(&with("[[rule]]\non = \"panic\"\naction = \"reboot\"\n"));
    assert!(
        matches!(&e, PolicyError::UnknownAction { action, .. } if action == "reboot"),
        "{e:?}"
    );
    says(&e, &["reboot", "start_standby", "fence"]);
}

#[test]
fn a_rule_naming_an_unknown_group_is_refused() {
    let e = err(&with(
        "[[rule]]\non = \"panic\"\ngroup = \"db\"\naction = \"restart\"\n",
    ));
    assert!(
        matches!(&e, PolicyError::UnknownGroup { group, .. } if group == "db"),
        "{e:?}"
    );
    says(&e, &["\"db\"", "[[group]]"]);
}

#[test]
fn a_group_naming_an_undeclared_guest_is_refused() {
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"web1\"\nmemory_mib = 1\n[[group]]\nname = \"web\"\nprimary = \"web1\"\nstandbys = [\"web9\"]\n"
    ));
    assert!(
        matches!(&e, PolicyError::UndeclaredGuest { guest, .. } if guest == "web9"),
        "{e:?}"
    );
    says(&e, &["web9", "no [[guest]] declares", "line 10"]);
}

#[test]
fn a_guest_in_two_groups_is_refused() {
    let e = err(&with("[[group]]\nname = \"other\"\nprimary = \"web2\"\n"));
    assert!(
        matches!(&e, PolicyError::GuestInTwoGroups { guest, first, second, .. }
            if guest == "web2" && first == "web" && second == "other"),
        "{e:?}"
    );
}

#[test]
fn a_standby_equal_to_the_primary_is_refused() {
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"web1\"\nmemory_mib = 1\n[[group]]\nname = \"web\"\nprimary = \"web1\"\nstandbys = [\"web1\"]\n"
    ));
    assert!(matches!(e, PolicyError::StandbyIsPrimary { .. }), "{e:?}");
    says(&e, &["primary \"web1\"", "itself"]);
}

#[test]
fn a_standby_listed_twice_and_duplicate_names_are_refused() {
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 1\n[[guest]]\nname = \"b\"\nmemory_mib = 1\n[[group]]\nname = \"g\"\nprimary = \"a\"\nstandbys = [\"b\", \"b\"]\n"
    ));
    assert!(matches!(e, PolicyError::RepeatedStandby { .. }), "{e:?}");
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 1\n[[guest]]\nname = \"a\"\nmemory_mib = 2\n"
    ));
    assert!(matches!(e, PolicyError::DuplicateGuest { .. }), "{e:?}");
    let e = err(&with("[[group]]\nname = \"web\"\nprimary = \"x\"\n"));
    assert!(matches!(e, PolicyError::DuplicateGroup { .. }), "{e:?}");
    let e = err(&format!("{HOST}[[guest]]\nname = \" \"\nmemory_mib = 1\n"));
    assert!(
        matches!(e, PolicyError::EmptyName { what: "guest", .. }),
        "{e:?}"
    );
}

#[test]
fn start_standby_for_a_group_without_standbys_is_refused() {
    let text = format!(
        "{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 1\n[[group]]\nname = \"solo\"\nprimary = \"a\"\n"
    );
    let e = err(&format!(
        "{text}[[rule]]\non = \"panic\"\ngroup = \"solo\"\naction = \"start_standby\"\n"
    ));
    assert!(
        matches!(&e, PolicyError::NoStandbys { group: Some(g), .. } if g == "solo"),
        "{e:?}"
    );
    says(&e, &["\"solo\" has no standbys"]);
    let e = err(&format!(
        "{text}[[rule]]\non = \"panic\"\naction = \"start_standby\"\n"
    ));
    assert!(
        matches!(e, PolicyError::NoStandbys { group: None, .. }),
        "{e:?}"
    );
    says(&e, &["no group has standbys"]);
}

#[test]
fn a_guest_larger_than_the_host_is_refused() {
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"big\"\nmemory_mib = 8192\n"
    ));
    assert!(
        matches!(
            e,
            PolicyError::GuestTooBig {
                memory_mib: 8192,
                max_memory_mib: 4096,
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["\"big\"", "8192 MiB", "4096 MiB", "never run"]);
}

#[test]
fn zero_capacities_and_sizes_are_refused() {
    let e = err("[host]\nmax_guests = 0\nmax_memory_mib = 4096\n");
    assert!(
        matches!(
            e,
            PolicyError::ZeroCapacity {
                key: "max_guests",
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["max_guests = 0", "line 2"]);
    let e = err("[host]\nmax_guests = 2\nmax_memory_mib = 0\n");
    assert!(
        matches!(
            e,
            PolicyError::ZeroCapacity {
                key: "max_memory_mib",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(&format!("{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 0\n"));
    assert!(
        matches!(
            e,
            PolicyError::ZeroGuestSize {
                key: "memory_mib",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 1\ncpus = 0\n"
    ));
    assert!(
        matches!(e, PolicyError::ZeroGuestSize { key: "cpus", .. }),
        "{e:?}"
    );
}

#[test]
fn a_failover_that_keeps_the_failed_guest_running_must_fit_beside_it() {
    let small = "[host]\nmax_guests = 1\nmax_memory_mib = 4096\n";
    let rule = "[[rule]]\non = \"service_exit\"\naction = \"start_standby\"\n";
    let e = err(&format!("{small}{GUESTS}{rule}"));
    assert!(matches!(e, PolicyError::FailoverCannotFit { .. }), "{e:?}");
    says(
        &e,
        &["keeps running", "stop_failed = true", "at most 1 guests"],
    );
    let tight = "[host]\nmax_guests = 4\nmax_memory_mib = 1000\n";
    let e = err(&format!("{tight}{GUESTS}{rule}"));
    says(&e, &["1024 MiB", "1000 MiB"]);
    // Stopping the failed guest, or a kind that kills it, needs room for one only.
    Policy::from_toml(&format!("{small}{GUESTS}{rule}stop_failed = true\n")).unwrap();
    Policy::from_toml(&format!(
        "{small}{GUESTS}[[rule]]\non = \"panic\"\naction = \"start_standby\"\n"
    ))
    .unwrap();
}

#[test]
fn hook_keys_belong_to_hooks() {
    let e = err(&with("[[rule]]\non = \"panic\"\naction = \"hook\"\n"));
    assert!(
        matches!(e, PolicyError::HookWithoutCommand { rule: 1, .. }),
        "{e:?}"
    );
    says(&e, &["needs command"]);
    let e = err(&with(
        "[[rule]]\non = \"panic\"\naction = \"hook\"\ncommand = []\n",
    ));
    assert!(matches!(e, PolicyError::HookWithoutCommand { .. }), "{e:?}");
    let e = err(&with(
        "[[rule]]\non = \"panic\"\naction = \"restart\"\ncommand = [\"/bin/true\"]\n",
    ));
    assert!(
        matches!(
            e,
            PolicyError::KeyNotForAction {
                key: "command",
                for_action: "hook",
                ..
            }
        ),
        "{e:?}"
    );
    says(
        &e,
        &["`command` only applies to action = \"hook\", not \"restart\""],
    );
    let e = err(&with(
        "[[rule]]\non = \"panic\"\naction = \"fence\"\ntimeout_secs = 3\n",
    ));
    assert!(
        matches!(
            e,
            PolicyError::KeyNotForAction {
                key: "timeout_secs",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(&with(
        "[[rule]]\non = \"panic\"\naction = \"restart\"\nstop_failed = true\n",
    ));
    assert!(
        matches!(
            e,
            PolicyError::KeyNotForAction {
                key: "stop_failed",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn hook_timeouts_out_of_range_are_refused() {
    for t in [0i64, 601, -5] {
        let e = err(&with(&format!(
            "[[rule]]\non = \"panic\"\naction = \"hook\"\ncommand = [\"/bin/true\"]\ntimeout_secs = {t}\n"
        )));
        assert!(
            matches!(e, PolicyError::TimeoutOutOfRange { value, .. } if value == t),
            "{e:?}"
        );
        says(&e, &["1 to 600"]);
    }
}

#[test]
fn where_values_other_than_string_int_bool_are_refused() {
    for (v, ty) in [
        ("1.5", "float"),
        ("[1, 2]", "array"),
        ("1979-05-27", "datetime"),
    ] {
        let e = err(&with(&format!(
            "[[rule]]\non = \"service_exit\"\nwhere = {{ code = {v} }}\naction = \"restart\"\n"
        )));
        assert!(
            matches!(&e, PolicyError::BadWhereValue { key, .. } if key == "code"),
            "{e:?}"
        );
        says(&e, &["where.code", ty]);
    }
}

#[test]
fn zero_limits_are_refused() {
    let e = err(&with("[limits]\nmax_restarts = 0\n"));
    assert!(
        matches!(
            e,
            PolicyError::ZeroLimit {
                key: "max_restarts",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(&with("[limits]\nwindow_secs = 0\n"));
    assert!(
        matches!(
            e,
            PolicyError::ZeroLimit {
                key: "window_secs",
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["window_secs", "at least 1"]);
}

#[test]
fn loaded_files_are_named_in_errors() {
    let dir = std::env::temp_dir().join(format!("vesper-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        with("[[rule]]\non = \"explode\"\naction = \"restart\"\n"),
    )
    .unwrap();
    let e = check(&path).unwrap_err();
    says(&e, &[&format!("{}:18:6", path.display())]);
    let missing = dir.join("missing.toml");
    let e = check(&missing).unwrap_err();
    assert!(
        matches!(e, PolicyError::File(TomlFileError::Io { .. })),
        "{e:?}"
    );
    says(&e, &["missing.toml"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guests_name_their_vmm_and_kernel_and_unknown_vmms_are_refused() {
    let text = format!(
        "{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 256\nvmm = \"builtin\"\nkernel = \"mini\"\n"
    );
    let p = Policy::from_toml(&text).unwrap();
    let a = p.guest("a").unwrap();
    assert_eq!(
        (a.vmm.as_str(), a.kernel.as_deref()),
        ("builtin", Some("mini"))
    );
    assert!(
        p.summary().contains("vmm builtin, kernel mini"),
        "{}",
        p.summary()
    );
    assert_eq!(
        Policy::from_toml(&with(""))
            .unwrap()
            .guest("web1")
            .unwrap()
            .vmm,
        "qemu"
    );
    let e = err(&format!(
        "{HOST}[[guest]]\nname = \"a\"\nmemory_mib = 256\nvmm = \"xen\"\n"
    ));
    assert!(matches!(e, PolicyError::UnknownVmm { .. }), "{e}");
    says(&e, &["\"a\"", "\"xen\"", "qemu", "builtin", "line 7"]);
}

#[test]
fn dump_is_per_guest_then_the_policy_then_the_daemon_flag() {
    // Nothing said: the daemon's flag decides, for declared guests and others.
    let p = Policy::from_toml(&with("")).unwrap();
    assert_eq!(p.dump(), DumpPolicy::default());
    assert_eq!(p.dump().wait_secs, DEFAULT_DUMP_WAIT_SECS);
    assert!(p.dumps("web1", true) && !p.dumps("web1", false));
    assert!(p.dumps("other", true) && !p.dumps("other", false));
    assert!(!p.summary().contains("dump:"), "{}", p.summary());

    // A guest's own key wins over [dump], which wins over the flag.
    let text = r#"[host]
max_guests = 4
max_memory_mib = 4096

[dump]
on_panic = true
wait_secs = 30

[[guest]]
name = "web1"
memory_mib = 512
dump = false

[[guest]]
name = "web2"
memory_mib = 512
"#;
    let p = Policy::from_toml(text).unwrap();
    assert_eq!(p.guest("web1").unwrap().dump, Some(false));
    assert_eq!(p.guest("web2").unwrap().dump, None);
    assert!(!p.dumps("web1", true));
    assert!(p.dumps("web2", false));
    assert!(p.dumps("undeclared", false));
    assert_eq!(p.dump().wait_secs, 30);
    let summary = p.summary();
    assert!(summary.contains("web1: 512 MiB"), "{summary}");
    assert!(summary.contains("no vmcore on panic"), "{summary}");
    assert!(
        summary.contains("dump: vmcore on panic on by default, failover waits up to 30 s"),
        "{summary}"
    );

    // [dump] on_panic = false turns dumps off unless a guest says otherwise.
    let p = Policy::from_toml(&format!(
        "{HOST}[dump]\non_panic = false\n[[guest]]\nname = \"a\"\nmemory_mib = 512\ndump = true\n"
    ))
    .unwrap();
    assert!(p.dumps("a", false));
    assert!(!p.dumps("b", true));
}

#[test]
fn a_dump_that_is_not_a_boolean_is_refused_where_it_stands() {
    for bad in ["\"yes\"", "1", "\"true\"", "[true]"] {
        let e = err(&format!(
            "{HOST}[[guest]]\nname = \"web1\"\nmemory_mib = 512\ndump = {bad}\n"
        ));
        assert!(matches!(e, PolicyError::BadDump { .. }), "{e:?}");
        says(
            &e,
            &["line 7", "guest \"web1\"", "dump =", "use true or false"],
        );
    }
    let e = err(&format!("{HOST}[dump]\non_panic = \"no\"\n"));
    says(
        &e,
        &["line 5", "[dump] on_panic", "\"no\"", "use true or false"],
    );
    for bad in ["0", "-5", "3601"] {
        let e = err(&format!("{HOST}[dump]\nwait_secs = {bad}\n"));
        assert!(matches!(e, PolicyError::DumpWaitOutOfRange { .. }), "{e:?}");
        says(&e, &["line 5", &format!("wait_secs = {bad}"), "1 to 3600"]);
    }
    let e = err(&format!("{HOST}[dump]\nonpanic = true\n"));
    says(&e, &["onpanic"]);
}

#[test]
fn a_probe_group_is_checked_through_the_callers_check_and_located() {
    let text =
        format!("{HOST}\n[[guest]]\nname = \"web1\"\nmemory_mib = 512\nprobe_group = \"g.toml\"\n");
    let p = Policy::load_text_for_test(&text);
    let r = p.guest("web1").unwrap().probe_group.clone().unwrap();
    assert_eq!(r.path, std::path::Path::new("/etc/vesper/g.toml"));
    assert!(p.summary().contains("probe group /etc/vesper/g.toml"));
    p.check_probe_groups(|_| Ok(())).unwrap();
    let e = p
        .check_probe_groups(|path| Err(format!("{}: no such file", path.display())))
        .unwrap_err();
    says(
        &e,
        &[
            "policy.toml:8:15",
            "web1",
            "probe_group",
            "g.toml: no such file",
        ],
    );
    says(
        &err(&format!(
            "{HOST}[[guest]]\nname = \"w\"\nmemory_mib = 1\nprobe_group = \" \"\n"
        )),
        &["empty probe group name"],
    );
}

mod definition;
