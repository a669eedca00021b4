//! The command-line flags, parsed as Go's `flag` package parses Calico's: `-v` (version) and
//! `-t` (datastore connectivity test, see `probe`), as `-t`, `--t`, `-t=true` or `-t=false`.
//! Parsing stops at the first argument that is not a flag, or after `--`.

/// What the flags ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub version: bool,
    pub test_connection: bool,
    pub help: bool,
}

/// Parses `args` (without the program name). `Err` is Go's message for a bad flag.
pub fn parse(args: &[String]) -> Result<Flags, String> {
    let mut flags = Flags::default();
    for arg in args {
        if arg == "--" {
            break;
        }
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|b| !b.is_empty())
        else {
            break;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let on = match value {
            None => true,
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
            Some(v) => {
                return Err(format!(
                    "invalid boolean value \"{v}\" for -{name}: parse error"
                ));
            }
        };
        match name {
            "v" | "version" => flags.version = on,
            "t" => flags.test_connection = on,
            "h" | "help" => flags.help = true,
            _ => return Err(format!("flag provided but not defined: -{name}")),
        }
    }
    Ok(flags)
}

/// The usage text for stderr.
pub const USAGE: &str =
    "Usage of calico:\n  -t\tTest datastore connection\n  -v\tDisplay version\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, String> {
        parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn go_flag_forms() {
        for t in [&["-t"][..], &["--t"], &["-t=true"], &["-t=1"]] {
            assert!(p(t).expect("ok").test_connection, "{t:?}");
        }
        assert!(!p(&["-t=false"]).expect("ok").test_connection);
        assert!(p(&["-v"]).expect("ok").version);
        assert!(p(&["--version"]).expect("ok").version);
        assert_eq!(p(&[]).expect("ok"), Flags::default());
        // Parsing stops at the first non-flag.
        assert!(!p(&["x", "-t"]).expect("ok").test_connection);
        assert!(!p(&["--", "-t"]).expect("ok").test_connection);
        assert_eq!(
            p(&["-x"]).expect_err("unknown"),
            "flag provided but not defined: -x"
        );
        assert!(p(&["-t=maybe"]).is_err());
    }
}
