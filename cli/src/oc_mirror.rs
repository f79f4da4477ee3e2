//! oc-mirror v2's command lines, as the scripts users carry over spell them
//! (`oc-mirror -c isc.yaml file://DIR --v2` and its two siblings), rewritten into
//! Airlock's own before parsing, so that one parser, one `--help` and one set of
//! checks serve both. A flag oc-mirror has and Airlock does not act on is refused
//! by name with what to do instead, never ignored.

/// Flags oc-mirror takes that Airlock does not act on, and why.
const REFUSED: &[(&str, &str)] = &[
    (
        "--since",
        "each imageset ships what earlier ones of the workspace did not, by the workspace's record, not by date",
    ),
    (
        "--retry-times",
        "registry requests are retried by Airlock's own policy (6 attempts, backoff to 30 s, Retry-After honoured)",
    ),
    (
        "--retry-delay",
        "registry requests are retried by Airlock's own policy (6 attempts, backoff to 30 s, Retry-After honoured)",
    ),
    (
        "--image-timeout",
        "a request that makes no progress for 300 s fails and is retried; there is no per-image deadline",
    ),
    (
        "--parallel-images",
        "images are published four at a time; use --parallel N for blob transfers at once",
    ),
    (
        "--cache-dir",
        "the workspace (--workspace, storageConfig.local.path) holds what a cache would",
    ),
    (
        "--strict-archive",
        "chunk files never exceed the limit (--limit, archiveSize): an image larger than it is split",
    ),
    (
        "--v1",
        "Airlock implements oc-mirror v2's workflows; drop --v1 (and the v1alpha2 configuration still parses)",
    ),
];

/// oc-mirror flags that Airlock spells differently.
const RENAMED: &[(&str, &str)] = &[("--parallel-layers", "--parallel")];

/// oc-mirror's flags that take no value, for those one side of Airlock does
/// not have (its own flags' arity is read from its parser, see [`arity`]).
const SWITCHES: &[&str] = &[
    "--v2",
    "--secure-policy",
    "--force-cache-delete",
    "--delete-signatures",
    "--delete-v1-images",
];

/// What Airlock's own command line (`command` and its subcommands) says of a
/// flag: whether it takes the next argument as its value (`--config FILE`; not
/// a switch, nor `--dest-tls-verify`, whose value needs `=`), or `None` when no
/// subcommand has it. Read from the parser itself, so that a flag added to
/// Airlock is rewritten right without a list to keep in step.
pub fn arity(command: &clap::Command, name: &str) -> Option<bool> {
    let matches = |a: &clap::Arg| match name.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => name
            .strip_prefix('-')
            .and_then(|s| s.chars().next())
            .is_some_and(|c| a.get_short() == Some(c) && name.len() == 2),
    };
    std::iter::once(command)
        .chain(command.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| matches(a))
        .map(|a| {
            a.get_action().takes_values()
                && !a.is_require_equals_set()
                && a.get_num_args().is_none_or(|n| n.min_values() > 0)
        })
}

/// Flags about the destination registry, which mirror to disk has none of:
/// oc-mirror takes them there without effect, and so does this.
pub const DESTINATION_FLAGS: &[&str] =
    &["--dest-tls-verify", "--dest-cert-dir", "--max-nested-paths"];

/// What an oc-mirror command line asks for, in Airlock's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcMirror {
    /// `-c`/`--config`.
    pub config: String,
    /// The positional destination: `file://DIR` or `docker://HOST[:PORT][/PREFIX]`.
    pub destination: String,
    /// `--from file://DIR` (disk to mirror), as a path.
    pub from: Option<String>,
    /// `--workspace file://DIR`, as a path.
    pub workspace: Option<String>,
    /// Every other argument, renamed where Airlock's name differs, `--v2` dropped.
    pub rest: Vec<String>,
    /// The flags of `rest` whose value is the argument after them.
    with_values: Vec<String>,
}

impl OcMirror {
    /// [`OcMirror::rest`] without the flags in `flags` (and their values).
    pub fn rest_without(&self, flags: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut skip_value = false;
        for arg in &self.rest {
            if std::mem::take(&mut skip_value) {
                continue;
            }
            let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
            if flags.contains(&name) {
                skip_value = !arg.contains('=') && self.with_values.iter().any(|f| f == name);
                continue;
            }
            out.push(arg.clone());
        }
        out
    }
}

/// `args` (without the program name) in oc-mirror's form, or `None` when they
/// are in Airlock's own (they name a subcommand of `command`, or have no
/// `file://` or `docker://` positional). `Err` names a refused flag, or what is
/// missing.
pub fn parse(args: &[String], command: &clap::Command) -> Option<Result<OcMirror, String>> {
    let commands: Vec<&str> = command
        .get_subcommands()
        .map(clap::Command::get_name)
        .chain(["help"])
        .collect();
    if args.iter().any(|a| commands.contains(&a.as_str())) {
        return None;
    }
    let (mut config, mut destination, mut from, mut workspace) = (None, None, None, None);
    let (mut rest, mut with_values) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") || n == "-c" => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let renamed = RENAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(name, |(_, to)| to);
        let takes_value = match (name, &inline) {
            (_, Some(_)) => false,
            _ if !name.starts_with('-') || SWITCHES.contains(&name) => false,
            ("-c" | "--config" | "--from" | "--workspace", None) => true,
            _ if REFUSED.iter().any(|(n, _)| *n == name) => false,
            // A flag this side does not have takes a value, as most of
            // oc-mirror's do; the rewritten command line is refused for it.
            _ => arity(command, renamed).unwrap_or(true),
        };
        let value = match (&inline, takes_value) {
            (Some(v), _) => Some(v.clone()),
            (None, true) => {
                i += 1;
                args.get(i).cloned()
            }
            (None, false) => None,
        };
        i += 1;
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
            return Some(Err(format!(
                "{name}: oc-mirror's flag, not acted on by Airlock: {why}"
            )));
        }
        let missing = || format!("{name} needs a value");
        match name {
            "-c" | "--config" => config = Some(value.ok_or_else(missing)),
            "--from" => from = Some(value.ok_or_else(missing)),
            "--workspace" => workspace = Some(value.ok_or_else(missing)),
            "--v2" => {}
            _ if !name.starts_with('-') => {
                if destination.is_some() {
                    return Some(Err(format!(
                        "{arg}: one destination (file://DIR or docker://HOST[/PREFIX]) at most"
                    )));
                }
                destination = Some(arg.clone());
            }
            _ => {
                rest.push(match &inline {
                    Some(v) => format!("{renamed}={v}"),
                    None => renamed.to_string(),
                });
                if inline.is_none() && takes_value {
                    with_values.push(renamed.to_string());
                    rest.extend(value);
                }
            }
        }
    }
    let destination =
        destination.filter(|d| d.starts_with("file://") || d.starts_with("docker://"))?;
    let path = |flag: &str, v: Option<Result<String, String>>| -> Result<Option<String>, String> {
        match v.transpose()? {
            None => Ok(None),
            Some(v) => v
                .strip_prefix("file://")
                .map(|p| Some(p.to_string()))
                .ok_or_else(|| format!("{flag} {v:?}: expected file://DIR, as oc-mirror takes it")),
        }
    };
    Some((|| {
        Ok(OcMirror {
            config: config
                .transpose()?
                .ok_or("-c/--config ISC.yaml is needed, as oc-mirror needs it")?,
            destination,
            from: path("--from", from)?,
            workspace: path("--workspace", workspace)?,
            rest,
            with_values,
        })
    })())
}

/// `args` (the program name first) rewritten by `into` when they are in
/// oc-mirror's form, unchanged otherwise (also when one is not UTF-8: oc-mirror's
/// forms are plain text).
pub fn rewrite(
    args: Vec<std::ffi::OsString>,
    command: &clap::Command,
    into: impl FnOnce(OcMirror) -> Result<Vec<String>, String>,
) -> Result<Vec<std::ffi::OsString>, String> {
    let Some(text) = args
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return Ok(args);
    };
    match parse(text.get(1..).unwrap_or_default(), command) {
        None => Ok(args),
        Some(parsed) => {
            let rewritten = into(parsed?)?;
            Ok(std::iter::once(args[0].clone())
                .chain(rewritten.into_iter().map(Into::into))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Airlock's subcommands as far as these tests need them, each flag with
    /// its real shape (a switch, a value, a value after `=` only).
    fn airlock() -> clap::Command {
        use clap::{Arg, ArgAction};
        let flags = || {
            [
                Arg::new("full").long("full").action(ArgAction::SetTrue),
                Arg::new("require")
                    .long("require-signatures")
                    .action(ArgAction::SetTrue),
                Arg::new("parallel").long("parallel"),
                Arg::new("authfile").long("authfile"),
                Arg::new("depth").long("max-nested-paths"),
                Arg::new("dest")
                    .long("dest-tls-verify")
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
            ]
        };
        clap::Command::new("airlock").subcommands(
            ["create", "mirror", "publish"].map(|n| clap::Command::new(n).args(flags())),
        )
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_three_workflows_are_read_as_oc_mirror_writes_them() {
        let commands = airlock();
        let m2d = parse(
            &args(
                "-c isc.yaml file:///data/mirror --v2 --dest-tls-verify=false --parallel-layers 4",
            ),
            &commands,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m2d.config, "isc.yaml");
        assert_eq!(m2d.destination, "file:///data/mirror");
        assert_eq!(m2d.rest, args("--dest-tls-verify=false --parallel 4"));
        assert_eq!(m2d.rest_without(DESTINATION_FLAGS), args("--parallel 4"));
        let full = parse(
            &args("-c=isc.yaml --full file:///d --max-nested-paths 2"),
            &commands,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (full.config.as_str(), full.destination.as_str()),
            ("isc.yaml", "file:///d")
        );
        assert_eq!(full.rest_without(DESTINATION_FLAGS), args("--full"));
        let m2m = parse(
            &args("--config=isc.yaml --workspace file:///w docker://mirror:5000/ocp --v2"),
            &commands,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m2m.workspace.as_deref(), Some("/w"));
        assert_eq!(m2m.destination, "docker://mirror:5000/ocp");
        let d2m = parse(
            &args("-c isc.yaml --from file:///data docker://m:5000 --authfile a.json"),
            &commands,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d2m.from.as_deref(), Some("/data"));
        assert_eq!(d2m.rest, args("--authfile a.json"));
    }

    #[test]
    fn airlock_forms_pass_and_refusals_name_the_flag() {
        let commands = airlock();
        assert_eq!(parse(&args("create --config x --out d"), &commands), None);
        assert_eq!(
            parse(&args("--log-level debug create --out d"), &commands),
            None
        );
        assert_eq!(parse(&args("--help"), &commands), None);
        let e = parse(&args("-c i.yaml file:///d --since 2024-01-01"), &commands)
            .unwrap()
            .unwrap_err();
        assert!(
            e.starts_with("--since: oc-mirror's flag, not acted on by Airlock: "),
            "{e}"
        );
        let e = parse(&args("file:///d"), &commands).unwrap().unwrap_err();
        assert!(e.contains("-c/--config"), "{e}");
        let e = parse(&args("-c i --from /plain docker://m"), &commands)
            .unwrap()
            .unwrap_err();
        assert!(e.contains("expected file://DIR"), "{e}");
    }

    /// Regression: the arity of Airlock's flags was guessed from a list, so a
    /// switch missing from it (`--require-signatures`) took the destination as
    /// its value and the oc-mirror form was not recognised.
    #[test]
    fn a_switch_before_the_destination_leaves_the_destination_alone() {
        let m = parse(
            &args("-c isc.yaml --require-signatures file:///d --dest-tls-verify --parallel 2"),
            &airlock(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.destination, "file:///d");
        assert_eq!(
            m.rest,
            args("--require-signatures --dest-tls-verify --parallel 2")
        );
        assert_eq!(
            m.rest_without(&["--parallel"]),
            args("--require-signatures --dest-tls-verify")
        );
        assert_eq!(arity(&airlock(), "--full"), Some(false));
        assert_eq!(arity(&airlock(), "--authfile"), Some(true));
        assert_eq!(arity(&airlock(), "--dest-tls-verify"), Some(false));
        assert_eq!(arity(&airlock(), "--nope"), None);
    }
}
