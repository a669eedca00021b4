//! A small argument reader: flags may appear anywhere, `--flag value` or `--flag=value`, and a
//! flag may have several spellings (`-o`, `--output`).

use anyhow::Result;

/// A mistake in the command line itself (unknown command or flag, missing value): exit code 2
/// and a pointer to the command's `--help`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fail with a [`UsageError`].
macro_rules! usage {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::args::UsageError(format!($($t)*))))
    };
}
pub(crate) use usage;

pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn new(argv: Vec<String>) -> Args {
        Args { rest: argv }
    }

    /// Remove a boolean flag given by any of `names`; true if it was there.
    pub fn flag(&mut self, names: &[&str]) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| !names.contains(&a.as_str()));
        self.rest.len() != before
    }

    /// Remove `NAME VALUE` or `NAME=VALUE` for any of `names`; the last one wins.
    pub fn value(&mut self, names: &[&str]) -> Result<Option<String>> {
        Ok(self.values(names)?.pop())
    }

    /// Remove every `NAME VALUE` / `NAME=VALUE` for any of `names`, in order.
    pub fn values(&mut self, names: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.rest.len() {
            let arg = &self.rest[i];
            if let Some(v) = names.iter().find_map(|n| {
                arg.strip_prefix(n)
                    .and_then(|r| r.strip_prefix('='))
                    .map(str::to_string)
            }) {
                self.rest.remove(i);
                out.push(v);
            } else if names.contains(&arg.as_str()) {
                if i + 1 >= self.rest.len() {
                    usage!("{arg} needs a value");
                }
                let name = self.rest.remove(i);
                let v = self.rest.remove(i);
                if v.starts_with("--") {
                    usage!("{name} needs a value, not the flag {v}");
                }
                out.push(v);
            } else {
                i += 1;
            }
        }
        Ok(out)
    }

    /// Remove and return the next word that is not a flag.
    pub fn positional(&mut self) -> Option<String> {
        let i = self
            .rest
            .iter()
            .position(|a| !a.starts_with('-') || a == "-")?;
        Some(self.rest.remove(i))
    }

    /// The words that are not flags, without removing them (to find which command's help to
    /// print).
    pub fn words(&self) -> Vec<&str> {
        self.rest
            .iter()
            .filter(|a| !a.starts_with('-') || *a == "-")
            .map(String::as_str)
            .collect()
    }

    /// Fail (usage error) on anything left over.
    pub fn finish(&self) -> Result<()> {
        if let Some(flag) = self.rest.iter().find(|a| a.starts_with('-') && *a != "-") {
            usage!("unknown flag {flag}");
        }
        if !self.rest.is_empty() {
            usage!("unexpected arguments: {}", self.rest.join(" "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::new(s.split_whitespace().map(String::from).collect())
    }

    #[test]
    fn spellings_and_positions() {
        let mut a = args("check -o r.json --show-problem-ips");
        assert_eq!(a.positional().as_deref(), Some("check"));
        assert!(a.flag(&["--show-problem-ips"]));
        assert_eq!(
            a.value(&["-o", "--output"]).expect("value").as_deref(),
            Some("r.json")
        );
        a.finish().expect("nothing left");

        let mut a = args("release --from-report=a --from-report b");
        assert_eq!(a.values(&["--from-report"]).expect("values"), ["a", "b"]);
    }

    #[test]
    fn leftovers_are_usage_errors() {
        let e = args("--bogus").finish().expect_err("unknown flag");
        assert!(e.downcast_ref::<UsageError>().is_some());
        let e = args("-o").value(&["-o"]).expect_err("missing value");
        assert!(e.to_string().contains("needs a value"));
    }
}
