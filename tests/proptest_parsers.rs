//! Property tests of every parser that reads input from outside: the HTTP
//! `Range` header, AT command lines (framing and commands), the
//! `AT+QFOTADL` command and its URL, fault rules and request paths.
//!
//! Each property runs through [`check`], which counts the cases and prints
//! one `proptest-summary` line per property (`--nocapture` shows them):
//! `fuzz/run.sh` runs this same file with `PROPTEST_CASES=1000000` and
//! sums the lines per parser. In the ordinary suite each property runs
//! proptest's default 256 cases (or `PROPTEST_CASES`). Only public API is
//! used; a panic inside a parser is caught by proptest and is a failure.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `property` over `strategy` for the configured number of cases and
/// prints `proptest-summary parser=<parser> property=<property> cases=<n>
/// failures=<0|1>`; panics with the shrunk counter-example on failure.
fn check<S: Strategy>(
    parser: &str,
    property: &str,
    strategy: S,
    property_fn: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let cases = AtomicU64::new(0);
    let result = runner.run(&strategy, |value| {
        cases.fetch_add(1, Ordering::Relaxed);
        property_fn(value)
    });
    let failures = u8::from(result.is_err());
    println!(
        "proptest-summary parser={parser} property={property} cases={} failures={failures}",
        cases.load(Ordering::Relaxed)
    );
    if let Err(err) = result {
        panic!("{parser}/{property}: {err}");
    }
}

/// Arbitrary text: any Unicode, printable ASCII with the parser's own
/// punctuation, or raw bytes read as lossy UTF-8 (what a socket gives).
fn any_text(alphabet: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::string::string_regex(alphabet).expect("alphabet regex"),
        proptest::collection::vec(any::<u8>(), 0..80)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

mod range {
    use super::*;
    use qfota_serve::serve::range::{RangeDecision, parse_range};

    /// A position as a client might write it: small, near `u64::MAX`,
    /// beyond it, empty or not a number.
    fn position() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..300).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("184467440737095516160".to_string()),
            Just(String::new()),
            "[0-9 +a-f-]{1,4}",
        ]
    }

    fn header() -> impl Strategy<Value = String> {
        let spec = (position(), position()).prop_map(|(a, b)| format!("{a}-{b}"));
        let unit = prop_oneof![Just("bytes"), Just("BYTES"), Just(" bytes "), Just("items")];
        prop_oneof![
            (unit, proptest::collection::vec(spec, 0..3))
                .prop_map(|(unit, specs)| format!("{unit}={}", specs.join(","))),
            any_text("[bytes=0-9, -]{0,24}"),
        ]
    }

    fn length() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..300, any::<u64>()]
    }

    /// Whatever the header, a 206 range lies inside the file.
    #[test]
    fn a_partial_range_is_always_within_the_file() {
        check(
            "range",
            "within_file",
            (header(), length()),
            |(value, len)| {
                if let RangeDecision::Partial { start, end } = parse_range(&value, len) {
                    prop_assert!(start <= end, "{value:?} len {len}: {start}-{end}");
                    prop_assert!(end < len, "{value:?} len {len}: {start}-{end}");
                }
                Ok(())
            },
        );
    }

    /// One well-formed spec gives exactly what RFC 9110 §14.1.2 says.
    #[test]
    fn a_single_spec_follows_rfc_9110() {
        let bound = prop_oneof![0u64..40, any::<u64>()];
        let strategy = (
            proptest::option::of(bound.clone()),
            proptest::option::of(bound),
            0u64..40,
        );
        check("range", "rfc9110_model", strategy, |(first, last, len)| {
            let text = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
            let value = format!("bytes={}-{}", text(first), text(last));
            let want = match (first, last) {
                // An empty package is always sent whole (§14.2 allows it).
                _ if len == 0 => RangeDecision::Full,
                (Some(a), Some(b)) if b < a => RangeDecision::Full,
                (Some(a), _) if a >= len => RangeDecision::Unsatisfiable { start: a },
                (Some(a), b) => RangeDecision::Partial {
                    start: a,
                    end: b.map_or(len - 1, |b| b.min(len - 1)),
                },
                (None, Some(0)) => RangeDecision::Unsatisfiable { start: len },
                (None, Some(n)) => RangeDecision::Partial {
                    start: len - n.min(len),
                    end: len - 1,
                },
                (None, None) => RangeDecision::Full,
            };
            prop_assert_eq!(parse_range(&value, len), want, "{} len {}", value, len);
            Ok(())
        });
    }
}

mod at {
    use super::*;
    use qfota_serve::modem::at::{Input, LineFramer, MAX_LINE};
    use qfota_serve::modem::commands;

    /// Bytes a host might type: AT commands, line ends, backspaces, NULs
    /// and anything else.
    fn port_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8),
            "(?i)at[+]?[a-z]{0,6}[?=]?[0-9,\"a-z:/.]{0,12}".prop_map(String::into_bytes),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(vec![0x08, 0x7f, 0x00]),
            Just(vec![b'A'; MAX_LINE + 3]),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    fn feed(chunks: &[&[u8]]) -> (Vec<Input>, Vec<u8>) {
        let mut framer = LineFramer::new();
        let (mut lines, mut echo) = (Vec::new(), Vec::new());
        for chunk in chunks {
            let (l, e) = framer.push(chunk);
            lines.extend(l);
            echo.extend(e);
        }
        (lines, echo)
    }

    /// However the bytes are chunked, the same lines and echo come out;
    /// every line is bounded and free of ASCII control bytes.
    #[test]
    fn framing_does_not_depend_on_chunking_and_lines_are_bounded() {
        let strategy = (
            port_bytes(),
            proptest::collection::vec(any::<usize>(), 0..6),
        );
        check("at", "framer_chunking", strategy, |(bytes, cuts)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[from..cut]);
                from = cut;
            }
            let whole = feed(&[&bytes]);
            prop_assert_eq!(&feed(&chunks), &whole);
            for input in &whole.0 {
                if let Input::Line(line) = input {
                    prop_assert!(line.chars().count() <= MAX_LINE, "{} chars", line.len());
                    prop_assert!(!line.chars().any(|c| c.is_ascii_control()), "{line:?}");
                }
            }
            Ok(())
        });
    }

    /// The command parser answers every line, framed or not, without
    /// panicking; a line of blanks (spaces and tabs, as the parser
    /// documents; a framed line holds no `\r`/`\n`) is no command.
    #[test]
    fn any_line_parses_to_a_command_or_an_error() {
        let strategy = prop_oneof![
            any_text("(?i)at[+]?[a-z]{0,8}[?=]?[0-9,\" a-z]{0,16}"),
            port_bytes().prop_map(|b| match feed(&[&b, b"\r"]).0.pop() {
                Some(Input::Line(line)) => line,
                _ => String::new(),
            }),
        ];
        check("at", "command_parse", strategy, |line| {
            let parsed = commands::parse(&line);
            if line.trim_matches([' ', '\t']).is_empty() {
                prop_assert!(matches!(parsed, Ok(None)), "{line:?}: {parsed:?}");
            }
            Ok(())
        });
    }
}

mod fotadl {
    use super::*;
    use qfota_serve::profile::Profile;
    use qfota_serve::sim::command::{FotaUrl, FotadlArgs, FotadlCommand, Scheme};

    /// `"url",n,n,n` as a host might type it, well-formed or not.
    fn at_args() -> impl Strategy<Value = String> {
        let url = "(?i)(ftp|http|https)://([a-z]{1,6}(:[a-z]{0,6})?@)?(\\[[0-9a-f:]{2,12}\\]|[a-z0-9.-]{1,12})(:[0-9]{0,6})?(/[a-zA-Z0-9._%?=@:/-]{0,20})?";
        prop_oneof![
            any_text("[\"a-z:/@,0-9\\[\\].]{0,40}"),
            (url, proptest::collection::vec("[0-9]{0,4}|x", 0..5)).prop_map(|(url, params)| {
                let mut out = format!("\"{url}\"");
                for p in params {
                    out.push(',');
                    out.push_str(&p);
                }
                out
            }),
        ]
    }

    /// Every profile answers every `AT+QFOTADL=` argument list with a
    /// command or an error; a command's URL is the text between the
    /// quotes, within the profile's limit.
    #[test]
    fn any_argument_list_parses_or_is_refused() {
        check("fotadl", "command_parse", at_args(), |args| {
            for profile in Profile::all() {
                // Local paths and `FILE:` forms carry no URL: only server
                // URLs are bounded by the URL limit.
                if let Some(url) = FotadlCommand::parse(&args, profile)
                    .ok()
                    .and_then(|cmd| cmd.source.url().cloned())
                {
                    prop_assert!(url.text.len() <= profile.url_max);
                    let quoted = format!("\"{}\"", url.text);
                    prop_assert!(args.starts_with(&quoted), "{args:?}");
                }
            }
            Ok(())
        });
    }

    fn host() -> impl Strategy<Value = (String, bool)> {
        prop_oneof![
            "[a-z][a-z0-9-]{0,15}(\\.[a-z]{2,5}){0,2}".prop_map(|h| (h, false)),
            any::<std::net::Ipv4Addr>().prop_map(|ip| (ip.to_string(), false)),
            any::<std::net::Ipv6Addr>().prop_map(|ip| (ip.to_string(), true)),
        ]
    }

    /// A URL put together from parts parses back into the same parts.
    #[test]
    fn a_url_built_from_parts_parses_back_into_them() {
        let scheme = prop_oneof![Just(Scheme::Ftp), Just(Scheme::Http), Just(Scheme::Https)];
        let strategy = (
            scheme,
            proptest::option::of((
                "[A-Za-z0-9._-]{1,10}",
                proptest::option::of("[A-Za-z0-9._!~-]{0,10}"),
            )),
            host(),
            proptest::option::of(1u16..),
            "[A-Za-z0-9._-]{1,16}(/[A-Za-z0-9._-]{1,16}){0,2}",
        );
        let profile = Profile::by_name("eg06xk").expect("profile");
        check(
            "fotadl",
            "url_round_trip",
            strategy,
            |(scheme, cred, (host, v6), port, path)| {
                let cred = if scheme.is_ftp() { cred } else { None };
                let userinfo = match &cred {
                    Some((u, Some(p))) => format!("{u}:{p}@"),
                    Some((u, None)) => format!("{u}@"),
                    None => String::new(),
                };
                let host_text = if v6 {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
                let url = format!("{scheme}://{userinfo}{host_text}{port_text}/{path}");
                let parsed = FotaUrl::parse(&url, profile)
                    .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
                prop_assert_eq!(parsed.scheme, scheme);
                prop_assert_eq!(&parsed.host, &host);
                prop_assert_eq!(parsed.port, port.unwrap_or(scheme.default_port()));
                prop_assert_eq!(parsed.user.as_deref(), cred.as_ref().map(|c| c.0.as_str()));
                prop_assert_eq!(
                    parsed.password.as_deref(),
                    cred.as_ref().and_then(|c| c.1.as_deref())
                );
                let want_path = if scheme.is_ftp() {
                    path
                } else {
                    format!("/{path}")
                };
                prop_assert_eq!(parsed.path, want_path);
                Ok(())
            },
        );
    }

    /// `FotadlArgs::to_at_args` → `FotadlCommand::parse` keeps the URL and
    /// every in-range optional parameter (`ec200`, seed 001 §3.2.1).
    #[test]
    fn formatted_arguments_parse_back() {
        let urc = prop_oneof![Just(0u32), 5u32..=100];
        let strategy = (
            "ftp://[a-z]{1,8}(:[a-z]{1,8})?@[a-z]{1,12}(:[1-9][0-9]{0,3})?/[A-Za-z0-9._-]{1,30}",
            proptest::option::of(0u32..=1),
            proptest::option::of(urc.clone()),
            proptest::option::of(urc),
        );
        let profile = Profile::by_name("ec200").expect("profile");
        check(
            "fotadl",
            "args_round_trip",
            strategy,
            |(url, mode, down, up)| {
                let args = FotadlArgs {
                    url: url.clone(),
                    upgrade_mode: mode,
                    download_urc_max: down,
                    update_urc_max: up,
                };
                let text = args.to_at_args();
                let cmd = FotadlCommand::parse(&text, profile)
                    .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                let parsed = cmd.source.url().map(|u| u.text.clone());
                prop_assert_eq!(parsed.as_ref(), Some(&url));
                let narrow = |n: Option<u32>| n.map(|n| u8::try_from(n).expect("in range"));
                // A parameter before a given one is sent as its default.
                let given = [mode, down, up].iter().rposition(Option::is_some);
                let filled = |i: usize, n: Option<u32>, default: u8| match given {
                    Some(last) if i <= last => Some(narrow(n).unwrap_or(default)),
                    _ => None,
                };
                prop_assert_eq!(cmd.params.upgrade_mode, filled(0, mode, 1));
                prop_assert_eq!(cmd.params.download_urc_max, filled(1, down, 0));
                prop_assert_eq!(cmd.params.update_urc_max, filled(2, up, 100));
                Ok(())
            },
        );
    }
}

mod fault {
    use super::*;
    use qfota_serve::serve::fault::FaultRule;

    /// Rule text from the grammar's own words, in any order and number,
    /// with values that are sometimes right.
    fn rule_text() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            (0u64..1000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (0u32..=120).prop_map(|n| format!("{n}%")),
            "[0-9.]{1,5}%?",
            Just("RETR".to_string()),
            Just("/Jun/*.zip".to_string()),
            Just("[".to_string()),
            Just("127.0.0.0/8".to_string()),
            Just("::1".to_string()),
            Just("https".to_string()),
            Just("0.5".to_string()),
            "[a-zA-Z*?/\\[\\]{}!-]{0,8}",
        ];
        let key = prop_oneof![
            Just("refuse-login"),
            Just("not-found"),
            Just("status"),
            Just("ftp-reply"),
            Just("drop-after"),
            Just("stall-after"),
            Just("slow"),
            Just("corrupt"),
            Just("command"),
            Just("path"),
            Just("protocol"),
            Just("peer"),
            Just("user"),
            Just("times"),
            Just("rate"),
            Just("PATH"),
            Just("nonsense"),
        ];
        let part = (key, proptest::option::of(value)).prop_map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.to_string(),
        });
        prop_oneof![
            proptest::collection::vec(part, 0..5).prop_map(|p| p.join(",")),
            any_text("[a-z=,%0-9 *./-]{0,30}"),
        ]
    }

    /// Any text is a rule or an error naming the rule; a rule's text
    /// (`Display`) parses back to the same rule.
    #[test]
    fn any_text_is_a_rule_or_an_error_and_rules_round_trip() {
        check("fault", "parse_round_trip", rule_text(), |text| {
            match text.parse::<FaultRule>() {
                Ok(rule) => {
                    let shown = rule.to_string();
                    let again: FaultRule = shown
                        .parse()
                        .map_err(|e| TestCaseError::fail(format!("{shown:?}: {e}")))?;
                    prop_assert_eq!(again.to_string(), shown);
                    prop_assert_eq!(again.action(), rule.action());
                }
                Err(err) => prop_assert_eq!(&err.rule, &text),
            }
            Ok(())
        });
    }
}

mod path {
    use super::*;
    use qfota_serve::catalog::path::{normalize, percent_decode};

    fn raw_path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(".."),
            Just("."),
            Just(""),
            Just("%2e%2e"),
            Just("%2E."),
            Just("%2f"),
            Just("%00"),
            Just("%5c"),
            Just("%"),
            Just("%zz"),
            Just("%c3%a9"),
            Just("%ff"),
            Just("Jun"),
            Just("update-v12-to-v13.zip"),
            Just("a\\b"),
        ];
        prop_oneof![
            proptest::collection::vec(segment, 0..8).prop_map(|s| s.join("/")),
            proptest::collection::vec(segment_text(), 0..6).prop_map(|s| s.join("/")),
            any_text("[./%0-9a-fA-F\\\\]{0,24}"),
        ]
    }

    fn segment_text() -> impl Strategy<Value = String> {
        "[a-z.%0-9]{0,6}"
    }

    /// Whatever the client sends, an accepted key stays under the root: no
    /// `..`, `.` or empty segment, not absolute, no backslash, no control
    /// character (NUL included); normalising it again changes nothing.
    #[test]
    fn a_normalized_path_never_escapes_the_root() {
        check("path", "stays_under_root", raw_path(), |raw| {
            let Ok(decoded) = percent_decode(&raw) else {
                return Ok(());
            };
            let Ok(key) = normalize(&decoded) else {
                return Ok(());
            };
            prop_assert!(!key.starts_with('/'), "{raw:?} → {key:?}");
            prop_assert!(!key.contains('\\'), "{raw:?} → {key:?}");
            prop_assert!(!key.chars().any(char::is_control), "{raw:?} → {key:?}");
            if !key.is_empty() {
                for segment in key.split('/') {
                    prop_assert!(!matches!(segment, "" | "." | ".."), "{raw:?} → {key:?}");
                }
            }
            let again = normalize(&key);
            prop_assert_eq!(again.as_deref(), Ok(key.as_str()));
            Ok(())
        });
    }
}
