//! Calico's label selector language (the subset pools use), parsed once and evaluated against a
//! label map.
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | "(" expr ")" | term
//! term    := "all()" | "global()" | "has(" key ")"
//!          | key ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//!          | key ( "in" | "not in" ) "{" [ string ( "," string )* ] "}"
//! string  := '"' chars '"' | "'" chars "'"
//! ```
//! An empty selector matches everything. `!=` and `not in` match labels that are absent, as in
//! Calico.

use std::collections::BTreeMap;
use std::fmt;

/// A parse error, with the byte offset where it was detected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {message} at position {position}")]
pub struct SelectorError {
    /// The selector text.
    pub input: String,
    /// Byte offset of the problem.
    pub position: usize,
    /// What was wrong.
    pub message: String,
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Matches everything.
    All,
    /// The label exists.
    Has(String),
    /// The label exists with this value.
    Eq(String, String),
    /// The label is absent or has another value.
    Ne(String, String),
    /// The label exists with one of these values.
    In(String, Vec<String>),
    /// The label is absent or has none of these values.
    NotIn(String, Vec<String>),
    /// The label exists and contains the string.
    Contains(String, String),
    /// The label exists and starts with the string.
    StartsWith(String, String),
    /// The label exists and ends with the string.
    EndsWith(String, String),
    /// Negation.
    Not(Box<Selector>),
    /// Both.
    And(Box<Selector>, Box<Selector>),
    /// Either.
    Or(Box<Selector>, Box<Selector>),
}

impl Selector {
    /// Parses a selector; an empty or blank string is `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { input, pos: 0 };
        p.skip_ws();
        if p.pos == input.len() {
            return Ok(Selector::All);
        }
        let sel = p.expr()?;
        p.skip_ws();
        if p.pos != input.len() {
            return Err(p.error("unexpected trailing input"));
        }
        Ok(sel)
    }

    /// Evaluates the selector against a set of labels.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str);
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::Contains(k, v) => get(k).is_some_and(|x| x.contains(v.as_str())),
            Selector::StartsWith(k, v) => get(k).is_some_and(|x| x.starts_with(v.as_str())),
            Selector::EndsWith(k, v) => get(k).is_some_and(|x| x.ends_with(v.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: &[String]| {
            vs.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {v:?}"),
            Selector::Ne(k, v) => write!(f, "{k} != {v:?}"),
            Selector::In(k, vs) => write!(f, "{k} in {{{}}}", list(vs)),
            Selector::NotIn(k, vs) => write!(f, "{k} not in {{{}}}", list(vs)),
            Selector::Contains(k, v) => write!(f, "{k} contains {v:?}"),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {v:?}"),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {v:?}"),
            Selector::Not(s) => write!(f, "!({s})"),
            Selector::And(a, b) => write!(f, "({a} && {b})"),
            Selector::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> SelectorError {
        SelectorError {
            input: self.input.to_owned(),
            position: self.pos,
            message: message.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    /// Consumes `tok` (after whitespace) if it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Consumes a keyword only when it is not the prefix of a longer word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let r = self.rest();
        let boundary = r[word.len().min(r.len())..]
            .chars()
            .next()
            .is_none_or(|c| !is_key_char(c));
        if r.starts_with(word) && boundary {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.error(format!("expected {tok:?}")))
        }
    }

    fn expr(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Selector::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Selector::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.rest().starts_with("!=") {
            return Err(self.error("expected a label name before \"!=\""));
        }
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.expr()?;
            self.expect(")")?;
            return Ok(inner);
        }
        self.term()
    }

    fn term(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        for (func, sel) in [("all", Selector::All), ("global", Selector::All)] {
            let save = self.pos;
            if self.eat_word(func) && self.eat("(") {
                self.expect(")")?;
                return Ok(sel);
            }
            self.pos = save;
        }
        let save = self.pos;
        if self.eat_word("has") && self.eat("(") {
            let key = self.key()?;
            self.expect(")")?;
            return Ok(Selector::Has(key));
        }
        self.pos = save;

        let key = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected \"in\" after \"not\""));
            }
            return Ok(Selector::NotIn(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("expected \"with\" after \"starts\""));
            }
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("expected \"with\" after \"ends\""));
            }
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        self.skip_ws();
        Err(self.error(format!(
            "expected an operator (==, !=, in, not in, contains, starts with, ends with) after label {key:?}"
        )))
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_key_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return Err(self.error(match self.rest().chars().next() {
                None => "unexpected end of selector; expected a label name".to_owned(),
                Some(c) => format!("expected a label name, found {c:?}"),
            }));
        }
        let key = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.error("expected a quoted string (\"...\" or '...')")),
        };
        let body = &self.rest()[1..];
        match body.find(quote) {
            Some(end) => {
                let s = body[..end].to_owned();
                self.pos += end + 2;
                Ok(s)
            }
            None => Err(self.error(format!("unterminated string; missing closing {quote}"))),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect("{")?;
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("expected \",\" or \"}\" in set"));
            }
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn grammar_table() {
        let node = labels(&[
            ("zone", "a"),
            ("kubernetes.io/hostname", "node-1"),
            ("rack", "r12"),
        ]);
        let table: &[(&str, bool)] = &[
            ("", true),
            ("   ", true),
            ("all()", true),
            ("global()", true),
            ("zone == \"a\"", true),
            ("zone == 'a'", true),
            ("zone=='b'", false),
            ("zone != \"b\"", true),
            ("missing != 'x'", true),
            ("zone != 'a'", false),
            ("zone in {\"a\", 'b'}", true),
            ("zone in {}", false),
            ("zone not in {\"b\"}", true),
            ("missing not in {'x'}", true),
            ("missing in {'x'}", false),
            ("has(zone)", true),
            ("has(missing)", false),
            ("!has(missing)", true),
            ("! has(zone)", false),
            ("!(zone == 'a')", false),
            ("kubernetes.io/hostname == 'node-1'", true),
            ("zone == 'a' && rack == 'r12'", true),
            ("zone == 'a' && rack == 'r13'", false),
            ("zone == 'b' || rack == 'r12'", true),
            ("zone == 'b' || rack == 'r13' && has(zone)", false),
            ("(zone == 'b' || rack == 'r12') && has(zone)", true),
            ("zone == 'b' || (rack == 'r12' && !has(zone))", false),
            ("rack starts with 'r1'", true),
            ("rack ends with '2'", true),
            ("rack contains '1'", true),
            ("has(in)", false),
            ("notin == 'x'", false),
        ];
        for (sel, want) in table {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&node), *want, "{sel} parsed as {s}");
            // Display output parses back to the same tree.
            assert_eq!(Selector::parse(&s.to_string()), Ok(s.clone()), "{sel}");
        }
    }

    #[test]
    fn errors_carry_position() {
        let table: &[(&str, usize, &str)] = &[
            ("zone ==", 7, "quoted string"),
            ("zone == 'a", 8, "unterminated"),
            ("zone = 'a'", 5, "expected an operator"),
            ("zone == 'a' &&", 14, "label name"),
            ("(zone == 'a'", 12, "expected \")\""),
            ("zone in {'a' 'b'}", 13, "\",\" or \"}\""),
            ("zone not {'a'}", 9, "\"in\" after \"not\""),
            ("zone == 'a' zone", 12, "trailing"),
            ("has(", 4, "label name"),
            ("== 'a'", 0, "label name"),
        ];
        for (sel, pos, msg) in table {
            let e = Selector::parse(sel).expect_err(sel);
            assert_eq!(e.position, *pos, "{sel}: {e}");
            assert!(e.message.contains(msg), "{sel}: {e}");
            assert!(e.to_string().contains(&format!("position {pos}")));
        }
    }
}
