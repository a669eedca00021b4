//! A small argument reader: flags may appear anywhere, `--flag value` or `--flag=value`.

use anyhow::{Result, bail};

pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn new(argv: Vec<String>) -> Args {
        Args { rest: argv }
    }

    /// Remove a boolean flag; true if it was there.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// Remove `name VALUE` or `name=VALUE`.
    pub fn value(&mut self, name: &str) -> Result<Option<String>> {
        let prefix = format!("{name}=");
        if let Some(i) = self.rest.iter().position(|a| a.starts_with(&prefix)) {
            let arg = self.rest.remove(i);
            return Ok(Some(arg[prefix.len()..].to_string()));
        }
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() {
            bail!("{name} needs a value");
        }
        self.rest.remove(i);
        Ok(Some(self.rest.remove(i)))
    }

    /// The next word that is not a flag.
    pub fn positional(&mut self) -> Option<String> {
        let i = self
            .rest
            .iter()
            .position(|a| !a.starts_with('-') || a == "-")?;
        Some(self.rest.remove(i))
    }

    /// Fail on anything left over.
    pub fn finish(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            bail!("unexpected arguments: {}", self.rest.join(" "))
        }
    }
}
