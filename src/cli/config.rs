//! The configuration file (`--config FILE`, `QFOTA_CONFIG`) and
//! `qfota-serve config`, which prints the effective serving configuration.
//!
//! The file is TOML whose keys are the serve flags' long names
//! (`ftp = 2121`, `passive-ports = "50000-50100"`, `user = ["test:test"]`,
//! `fault = ["drop-after=50%,path=/big-*.zip"]`, `allow-invalid = true`)
//! plus `dir` for the package folder. Precedence: flag > environment >
//! file > default. It is implemented with clap alone, so every serve flag —
//! including ones added later — has its key, and every value goes through
//! the flag's own parser: after the command line is parsed, each key whose
//! flag was not given on the command line or in the environment
//! (`ArgMatches::value_source`) becomes that flag again, and the serve
//! arguments are parsed once more — with the requirements (a folder, a
//! protocol) checked then, since the file may supply them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgGroup, ArgMatches, Args, Command, FromArgMatches};

use crate::cli::serve::ServeArgs;

/// `qfota-serve config [--config FILE] [flags]`: the serve flags, none
/// required.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The serving flags whose effective values are printed.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Id of the `--config` argument, which is no key of the file itself.
const CONFIG_ID: &str = "config";

/// Why the configuration cannot be resolved (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, what was expected).
        message: String,
    },
    /// A key that is no serve flag.
    #[error(
        "config file {path}: unknown key `{key}` (keys are the serve flags' long names, and `dir`)"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of the wrong shape, or one the flag's parser refuses.
    #[error("config file {path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key and what is wrong.
        message: String,
    },
    /// The merged flags do not form a valid serve command line (missing
    /// folder or protocol with no file to supply them): clap's own error.
    #[error(transparent)]
    Usage(#[from] clap::Error),
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    Flag,
    /// The named environment variable.
    Env(String),
    /// The configuration file.
    File,
    /// The built-in default.
    Default,
}

/// The resolved serve configuration: the flags, the merged matches they
/// came from, and each set key's source.
#[derive(Debug)]
pub struct Effective {
    /// The serve flags with every level applied.
    pub args: ServeArgs,
    /// The merged matches (raw values, for printing).
    pub matches: ArgMatches,
    /// Source of each key that has a value.
    pub sources: BTreeMap<String, Source>,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
}

/// The serve arguments as a command of their own; with `require`, the
/// folder and at least one protocol are required, and `--tls-cert`,
/// `--tls-key` and `--admin-allow` need their partners.
pub fn serve_command(require: bool) -> Command {
    let cmd = ServeArgs::augment_args(Command::new("qfota-serve"));
    if !require {
        return cmd;
    }
    // Pairs are checked here, on the merged values, not by the first
    // parse: the file or the environment may supply the other half.
    cmd.mut_arg("dir", |a| a.required(true))
        .mut_arg("tls_cert", |a| a.requires("tls_key"))
        .mut_arg("tls_key", |a| a.requires("tls_cert"))
        .mut_arg("admin_allow", |a| a.requires("admin"))
        .group(
            ArgGroup::new("protocol")
                .required(true)
                .multiple(true)
                .args(["ftp", "http", "https"]),
        )
}

/// The file key of an argument: its long name, or its id for a positional.
fn key_of(arg: &clap::Arg) -> String {
    arg.get_long()
        .map_or_else(|| arg.get_id().to_string(), str::to_string)
}

/// Adds an argument's values to `argv` as `--long=value` (a positional's
/// to `positional`), a `SetTrue` flag as `--long` when `value` is `true`.
fn push_values(
    arg: &clap::Arg,
    values: &[OsString],
    argv: &mut Vec<OsString>,
    positional: &mut Vec<OsString>,
) {
    let Some(long) = arg.get_long() else {
        positional.extend(values.iter().cloned());
        return;
    };
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        if values.iter().any(|v| v == "true") {
            argv.push(format!("--{long}").into());
        }
        return;
    }
    for v in values {
        let mut flag = OsString::from(format!("--{long}="));
        flag.push(v);
        argv.push(flag);
    }
}

/// A TOML value as the flag's raw values: a string, number or boolean, or
/// an array of them (a repeatable flag).
fn toml_values(key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s.into()]),
        toml::Value::Integer(n) => Ok(vec![n.to_string().into()]),
        toml::Value::Float(x) => Ok(vec![x.to_string().into()]),
        toml::Value::Boolean(b) => Ok(vec![b.to_string().into()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err(format!("`{key}`: an array of strings or numbers expected"))
                }
                v => toml_values(key, v).map(|mut one| one.remove(0)),
            })
            .collect(),
        _ => Err(format!(
            "`{key}`: a string, number, boolean or array expected"
        )),
    }
}

/// clap's message up to its usage block, on one line: `the following
/// required arguments were not provided: <--ftp <PORT>|…>`.
fn first_paragraph(message: &str) -> String {
    message
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Applies the configuration file named by `--config` / `QFOTA_CONFIG` in
/// `matches` (the serve arguments as parsed from the command line and the
/// environment) under them, and parses the result; with `require`, a
/// folder and a protocol must be set by then.
///
/// # Errors
/// [`ConfigError`]: the file is unreadable, not TOML, has an unknown key or
/// a bad value; or (`Usage`) a requirement is unmet.
pub fn resolve(matches: &ArgMatches, require: bool) -> Result<Effective, ConfigError> {
    let cmd = serve_command(require);
    let mut argv: Vec<OsString> = vec!["qfota-serve".into()];
    let mut positional = Vec::new();
    let mut sources = BTreeMap::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        match matches.value_source(id) {
            Some(ValueSource::CommandLine) => {
                let raw: Vec<OsString> = matches
                    .try_get_raw(id)
                    .ok()
                    .flatten()
                    .map(|vals| vals.map(OsString::from).collect())
                    .unwrap_or_default();
                push_values(arg, &raw, &mut argv, &mut positional);
                sources.insert(key_of(arg), Source::Flag);
            }
            // clap reads the variable again in the final parse.
            Some(ValueSource::EnvVariable) => {
                let var = arg.get_env().map(|v| v.to_string_lossy().into_owned());
                sources.insert(key_of(arg), Source::Env(var.unwrap_or_default()));
            }
            _ => {}
        }
    }
    let file = matches.get_one::<PathBuf>(CONFIG_ID).cloned();
    if let Some(path) = &file {
        for (key, value) in read_table(path)? {
            let arg = cmd
                .get_arguments()
                .find(|a| key_of(a) == key && a.get_id() != CONFIG_ID)
                .ok_or_else(|| ConfigError::UnknownKey {
                    path: path.clone(),
                    key: key.clone(),
                })?;
            if sources.contains_key(&key) {
                continue;
            }
            // A switch takes a TOML boolean only (`"yes"` or `1` would
            // otherwise silently mean false); a boolean is no file name or
            // port; only a repeatable flag takes an array.
            let misfit = match (arg.get_action(), &value) {
                (ArgAction::SetTrue, v) if !v.is_bool() => {
                    Some(format!("true or false expected, not {value}"))
                }
                (ArgAction::SetTrue, _) => None,
                (_, toml::Value::Boolean(_)) => {
                    Some("a string or number expected, not a boolean".to_string())
                }
                (ArgAction::Append, _) => None,
                (_, toml::Value::Array(_)) => {
                    Some("one value expected, not an array (the flag does not repeat)".to_string())
                }
                _ => None,
            };
            if let Some(what) = misfit {
                return Err(ConfigError::Value {
                    path: path.clone(),
                    message: format!("`{key}`: {what}"),
                });
            }
            let values = toml_values(&key, &value).map_err(|message| ConfigError::Value {
                path: path.clone(),
                message,
            })?;
            push_values(arg, &values, &mut argv, &mut positional);
            sources.insert(key, Source::File);
        }
    }
    if !positional.is_empty() {
        argv.push("--".into());
        argv.extend(positional);
    }
    let merged = cmd.try_get_matches_from(argv).map_err(|e| match &file {
        Some(path) if sources.values().any(|s| *s == Source::File) => ConfigError::Value {
            path: path.clone(),
            message: first_paragraph(&e.to_string()),
        },
        _ => ConfigError::Usage(e),
    })?;
    for arg in serve_command(false).get_arguments() {
        let id = arg.get_id().as_str();
        if merged.value_source(id) == Some(ValueSource::DefaultValue) {
            sources.entry(key_of(arg)).or_insert(Source::Default);
        }
    }
    let args = ServeArgs::from_arg_matches(&merged)?;
    Ok(Effective {
        args,
        matches: merged,
        sources,
        file,
    })
}

/// Hides the secret part of a value: the password of `NAME:PASSWORD`
/// (`user`), or all of a key naming a password, secret or token.
fn mask(key: &str, value: &str) -> String {
    if key == "user" {
        return match value.split_once(':') {
            Some((name, _)) => format!("{name}:***"),
            None => "***".into(),
        };
    }
    if ["password", "secret", "token"]
        .iter()
        .any(|s| key.contains(s))
    {
        return "***".into();
    }
    value.to_string()
}

/// One raw value as TOML: a bare integer when it is all digits, else a
/// quoted string.
fn toml_scalar(v: &str) -> toml::Value {
    match v.parse::<i64>() {
        Ok(n) if !v.starts_with('+') && (v == "0" || !v.starts_with('0')) => {
            toml::Value::Integer(n)
        }
        _ => toml::Value::String(v.to_string()),
    }
}

/// The effective configuration as TOML that `--config` reads back (the
/// passwords masked), one key per line with its source as a comment; keys
/// with no value are listed commented out.
pub fn render(eff: &Effective) -> String {
    let mut out = String::from(
        "# qfota-serve effective configuration (precedence: flag > environment > file > default)\n",
    );
    match &eff.file {
        Some(path) => out.push_str(&format!("# config file: {}\n", path.display())),
        None => out.push_str("# config file: none\n"),
    }
    for arg in serve_command(false).get_arguments() {
        let id = arg.get_id().as_str();
        if id == CONFIG_ID {
            continue;
        }
        let key = key_of(arg);
        let raw: Vec<String> = eff
            .matches
            .try_get_raw(id)
            .ok()
            .flatten()
            .map(|vals| vals.map(|v| mask(&key, &v.to_string_lossy())).collect())
            .unwrap_or_default();
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            // The parsed switch: its variable may say `1` or `yes`.
            Some(toml::Value::Boolean(eff.matches.get_flag(id)))
        } else if repeatable && !raw.is_empty() {
            // Items of a delimited list (`QFOTA_USER='a:b, c:d'`) as their
            // parsers read them: without the spaces around them.
            let listed = arg.get_value_delimiter().is_some();
            Some(toml::Value::Array(
                raw.iter()
                    .map(|v| toml::Value::String(if listed { v.trim() } else { v }.to_string()))
                    .collect(),
            ))
        } else {
            raw.first().map(|v| toml_scalar(v))
        };
        let source = match eff.sources.get(&key) {
            Some(Source::Flag) => "flag".to_string(),
            Some(Source::Env(var)) => format!("env {var}"),
            Some(Source::File) => "file".to_string(),
            Some(Source::Default) | None => "default".to_string(),
        };
        match value {
            Some(v) => out.push_str(&format!("{key} = {v}  # {source}\n")),
            None => out.push_str(&format!("# {key} = (not set)\n")),
        }
    }
    out
}

/// Runs `qfota-serve config`: prints the effective configuration (exit 1
/// when it cannot be written).
///
/// # Errors
/// The file cannot be used ([`ConfigError`], exit 2).
pub fn run(matches: &ArgMatches) -> Result<ExitCode, ConfigError> {
    let eff = resolve(matches, false)?;
    if let Err(e) = super::print_output(&render(&eff)) {
        errln!("qfota-serve config: cannot write the configuration: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(args: &[&str]) -> ArgMatches {
        serve_command(false)
            .try_get_matches_from(std::iter::once("qfota-serve").chain(args.iter().copied()))
            .unwrap()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let f = file(
            "dir = \"pk\"\nftp = 2121\nhttp = 8080\nuser = [\"a:b\", \"c:d\"]\n\
             fault = [\"status=503,protocol=http\"]\nallow-invalid = true\n\
             passive-ports = \"41000-41010\"\n",
        );
        let p = f.path().to_str().unwrap();
        let eff = resolve(&matches(&["--config", p, "--ftp", "21"]), true).unwrap();
        assert_eq!(eff.args.ftp, Some(21));
        assert_eq!(eff.args.http, Some(8080));
        assert_eq!(eff.args.users.len(), 2);
        assert_eq!(eff.args.faults.len(), 1);
        assert!(eff.args.allow_invalid);
        assert_eq!(eff.args.passive_ports, 41000..=41010);
        assert_eq!(eff.args.dir, Some(PathBuf::from("pk")));
        assert_eq!(eff.sources["ftp"], Source::Flag);
        assert_eq!(eff.sources["http"], Source::File);
        assert_eq!(eff.sources["bind"], Source::Default);
        let text = render(&eff);
        assert!(text.contains("ftp = 21  # flag"), "{text}");
        assert!(
            text.contains("user = [\"a:***\", \"c:***\"]  # file"),
            "{text}"
        );
        assert!(text.contains("allow-invalid = true  # file"), "{text}");
        assert!(text.contains("# https = (not set)"), "{text}");
        // What it prints reads back (the masked passwords aside).
        let back = file(&text);
        let again = resolve(&matches(&["--config", back.path().to_str().unwrap()]), true).unwrap();
        assert_eq!(again.args.ftp, Some(21));
        assert_eq!(again.args.passive_ports, 41000..=41010);
    }

    #[test]
    fn bad_files_are_errors_naming_the_problem() {
        for (text, want) in [
            ("ftp = 21\nlisten = 3\n", "unknown key `listen`"),
            ("config = \"x\"\n", "unknown key `config`"),
            ("ftp = \"abc\"\n", "abc"),
            ("ftp = [[1]]\n", "`ftp`"),
            ("ftp = \n", "config file"),
            (
                "log = true\n",
                "`log`: a string or number expected, not a boolean",
            ),
            ("http = [80]\n", "`http`: one value expected, not an array"),
        ] {
            let f = file(text);
            let err = resolve(&matches(&["--config", f.path().to_str().unwrap()]), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let err = resolve(&matches(&["--config", "/nonexistent.toml"]), false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.toml"), "{err}");
    }

    #[test]
    fn requirements_are_checked_after_the_file() {
        assert!(matches!(
            resolve(&matches(&["pk"]), true),
            Err(ConfigError::Usage(_))
        ));
        let f = file("http = 0\n");
        let eff = resolve(
            &matches(&["--config", f.path().to_str().unwrap(), "pk"]),
            true,
        )
        .unwrap();
        assert_eq!(eff.args.http, Some(0));
    }

    #[test]
    fn a_pair_may_be_split_between_file_and_flags() {
        let f = file("http = 80\nadmin = \"127.0.0.1:9100\"\ntls-key = \"k.pem\"\n");
        let p = f.path().to_str().unwrap();
        let eff = resolve(
            &matches(&[
                "--config",
                p,
                "--admin-allow",
                "192.0.2.0/24",
                "--tls-cert",
                "c.pem",
                "pk",
            ]),
            true,
        )
        .unwrap();
        assert_eq!(eff.args.admin_allow.len(), 1);
        assert_eq!(eff.args.tls_cert, Some(PathBuf::from("c.pem")));
        // Still a pair once everything is merged.
        let err = resolve(
            &matches(&["--http", "80", "--admin-allow", "192.0.2.0/24", "pk"]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--admin"), "{err}");
        let err = resolve(
            &matches(&["--http", "80", "--tls-key", "k.pem", "pk"]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--tls-cert"), "{err}");
    }
}
