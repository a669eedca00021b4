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
//!
//! Bounds: a selector longer than [`MAX_SELECTOR_LEN`] bytes, or nesting `(` and `!` deeper
//! than [`MAX_SELECTOR_DEPTH`], is a parse error, so neither parsing nor evaluation can recurse
//! without bound (`a && b && c` is one flat node, not a chain). The parser works on any UTF-8
//! input: it only ever advances over whole characters, and never panics.

use std::collections::BTreeMap;
use std::fmt;

/// Longest selector accepted, in bytes. Calico's pool selectors are a few terms; a long `in`
/// set of node names still fits many times over.
pub const MAX_SELECTOR_LEN: usize = 16 * 1024;

/// Deepest nesting of `(` and `!` accepted.
pub const MAX_SELECTOR_DEPTH: usize = 32;

/// How much of a rejected selector an error repeats.
pub const PREVIEW_CHARS: usize = 120;

/// A parse error, with the byte offset where it was detected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {message} at position {position}")]
pub struct SelectorError {
    /// The selector text (its first [`PREVIEW_CHARS`] characters and `...` when longer).
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
    /// All of them (two or more).
    And(Vec<Selector>),
    /// Any of them (two or more).
    Or(Vec<Selector>),
}

impl Selector {
    /// Parses a selector; an empty or blank string is `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser {
            input,
            pos: 0,
            depth: 0,
        };
        if input.len() > MAX_SELECTOR_LEN {
            return Err(p.error(format!(
                "the selector is {} bytes long; the limit is {MAX_SELECTOR_LEN}",
                input.len()
            )));
        }
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
            Selector::And(all) => all.iter().all(|s| s.matches(labels)),
            Selector::Or(any) => any.iter().any(|s| s.matches(labels)),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: &[String]| vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ");
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, vs) => write!(f, "{k} in {{{}}}", list(vs)),
            Selector::NotIn(k, vs) => write!(f, "{k} not in {{{}}}", list(vs)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => {
                f.write_str("!")?;
                operand(f, s, matches!(**s, Selector::And(_) | Selector::Or(_)))
            }
            Selector::And(all) => operands(f, all, " && ", |s| {
                matches!(s, Selector::And(_) | Selector::Or(_))
            }),
            Selector::Or(any) => operands(f, any, " || ", |s| matches!(s, Selector::Or(_))),
        }
    }
}

/// Parentheses go only where the tree needs them to parse back the same (an `||` under `&&`,
/// an operator under its own kind, any `&&` or `||` under `!`), i.e. where the input had a
/// group too: what is printed nests no deeper than what was parsed, so it stays within the
/// parser's bound ([`MAX_SELECTOR_DEPTH`]). A term under `!` needs none (`!a == "x"`).
fn operand(f: &mut fmt::Formatter<'_>, s: &Selector, wrap: bool) -> fmt::Result {
    if wrap {
        write!(f, "({s})")
    } else {
        write!(f, "{s}")
    }
}

fn operands(
    f: &mut fmt::Formatter<'_>,
    items: &[Selector],
    sep: &str,
    wrap: impl Fn(&Selector) -> bool,
) -> fmt::Result {
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        operand(f, s, wrap(s))?;
    }
    Ok(())
}

/// A string literal as the grammar has it (no escapes): in double quotes unless it holds one.
/// A parsed value never holds both kinds.
fn quote(v: &str) -> String {
    if v.contains('"') {
        format!("'{v}'")
    } else {
        format!("\"{v}\"")
    }
}

/// `pos` is always at a character boundary: it only moves past ASCII tokens that were matched
/// in full, or by `len_utf8` of whole characters.
struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// Current nesting of `(` and `!`.
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> SelectorError {
        SelectorError {
            input: preview(self.input),
            position: self.pos,
            message: message.into(),
        }
    }

    fn rest(&self) -> &str {
        self.input.get(self.pos..).unwrap_or("")
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
        let whole_word = self
            .rest()
            .strip_prefix(word)
            .is_some_and(|after| after.chars().next().is_none_or(|c| !is_key_char(c)));
        if whole_word {
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
        let mut any = vec![self.and()?];
        while self.eat("||") {
            any.push(self.and()?);
        }
        Ok(flat(any, Selector::Or))
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut all = vec![self.unary()?];
        while self.eat("&&") {
            all.push(self.unary()?);
        }
        Ok(flat(all, Selector::And))
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.rest().starts_with("!=") {
            return Err(self.error("expected a label name before \"!=\""));
        }
        if self.eat("!") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Selector::Not(Box::new(inner)));
        }
        if self.eat("(") {
            self.enter()?;
            let inner = self.expr()?;
            self.expect(")")?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.term()
    }

    /// One level deeper into the `(` or `!` just eaten, refused past [`MAX_SELECTOR_DEPTH`].
    fn enter(&mut self) -> Result<(), SelectorError> {
        if self.depth >= MAX_SELECTOR_DEPTH {
            let mut e = self.error(format!(
                "nested deeper than {MAX_SELECTOR_DEPTH} levels of \"(\" and \"!\""
            ));
            e.position = self.pos.saturating_sub(1);
            return Err(e);
        }
        self.depth += 1;
        Ok(())
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
        let key = self.rest().get(..len).unwrap_or("").to_owned();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.error("expected a quoted string (\"...\" or '...')")),
        };
        // The quote is one ASCII byte, so the body starts at a character boundary.
        let body = self.rest().get(1..).unwrap_or("");
        match body.split_once(quote) {
            Some((s, _)) => {
                let s = s.to_owned();
                self.pos += s.len() + 2;
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

/// The start of `input`, cut at a character boundary.
fn preview(input: &str) -> String {
    match input.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}...", &input[..cut]),
        None => input.to_owned(),
    }
}

/// One operand stands for itself; more make an `And` or `Or`.
fn flat(mut items: Vec<Selector>, group: fn(Vec<Selector>) -> Selector) -> Selector {
    if items.len() == 1 {
        items.pop().unwrap_or(Selector::All)
    } else {
        group(items)
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {

    /// What is printed parses back to the same selector, within the nesting bound whenever
    /// the input was (a chain of `!` used to print as `!(!(...))`, twice as deep, found by
    /// fuzzing; an operator at the top, or a term under `!`, got a pair of its own).
    #[test]
    fn printed_negations_parse_back_within_the_bound() {
        for input in [
            format!("{}has(zone)", "!".repeat(26)),
            format!("{}has(zone)", "!".repeat(32)),
            "!(a == 'x' && has(b))".to_owned(),
            "!a == 'x'".to_owned(),
            "!!all()".to_owned(),
            // At the bound under a top-level operator, which used to be printed in
            // parentheses of its own, and under `!` a term used to get them too.
            format!("a == 'x' && {}has(b)", "!".repeat(32)),
            format!("a == 'x' || {}has(b) && c == 'y'", "!".repeat(32)),
            format!("{}a == 'x'", "!".repeat(32)),
            format!(
                "a == 'x' && {}b == 'y' || c == 'z'{}",
                "(".repeat(32),
                ")".repeat(32)
            ),
            "(a == 'x' || b == 'y') || c == 'z'".to_owned(),
            "(a == 'x' && b == 'y') && (c == 'z' || has(d))".to_owned(),
        ] {
            let parsed = Selector::parse(&input).expect("input parses");
            let printed = parsed.to_string();
            let again = Selector::parse(&printed)
                .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}: {e}"));
            assert_eq!(again, parsed, "{input:?} printed as {printed:?}");
        }
    }
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the input, parsing returns (no panic), and what parses prints back to
        /// the same tree.
        #[test]
        fn any_input_parses_or_fails_cleanly(
            s in prop_oneof!["\\PC{0,48}", "[a-zé ()!&|='\"{},.\\\\\n]{0,48}"]
        ) {
            if let Ok(sel) = Selector::parse(&s) {
                let _ = sel.matches(&BTreeMap::new());
                prop_assert_eq!(Selector::parse(&sel.to_string()), Ok(sel));
            }
        }
    }

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
    fn non_ascii_values_and_flat_chains() {
        let node = labels(&[("zone", "zürich")]);
        let s = Selector::parse("zone == 'zürich' && !has(é_not_a_key) || zone in {'å'}")
            .expect_err("é is not a label character");
        assert_eq!(s.position, 26, "{s}");
        let s = Selector::parse("zone == 'zürich'").expect("non-ASCII value");
        assert!(s.matches(&node));
        // A long chain is one node: evaluation and drop do not recurse per term.
        let chain = vec!["has(zone)"; 1000].join(" && ");
        match Selector::parse(&chain).expect("chain") {
            Selector::And(all) => assert_eq!(all.len(), 1000),
            other => panic!("not flat: {other:?}"),
        }
    }

    #[test]
    fn bounds() {
        let long = format!(
            "zone in {{{}}}",
            vec!["'a'"; MAX_SELECTOR_LEN / 4].join(",")
        );
        assert!(long.len() > MAX_SELECTOR_LEN);
        let e = Selector::parse(&long).expect_err("too long");
        assert!(e.message.contains("limit is 16384"), "{e}");
        assert!(e.input.len() < 200, "the error repeats only the start");
        let deep = format!("{}has(a){}", "(".repeat(32), ")".repeat(32));
        assert!(
            Selector::parse(&deep)
                .expect("32 levels")
                .matches(&labels(&[("a", "")]))
        );
        let deeper = format!("{}has(a)", "!".repeat(33));
        let e = Selector::parse(&deeper).expect_err("33 levels");
        assert!(e.message.contains("nested deeper"), "{e}");
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
            // Not ASCII: the parser stops at the character, never inside it.
            ("abé == 'x'", 2, "expected an operator"),
            ("é", 0, "found 'é'"),
            ("allé()", 3, "expected an operator"),
            ("zone == 'é' && é", 16, "found 'é'"),
            ("hasé(a)", 3, "expected an operator"),
            (
                "((((((((((((((((((((((((((((((((((zone == 'a'",
                32,
                "nested deeper than 32",
            ),
        ];
        for (sel, pos, msg) in table {
            let e = Selector::parse(sel).expect_err(sel);
            assert_eq!(e.position, *pos, "{sel}: {e}");
            assert!(e.message.contains(msg), "{sel}: {e}");
            assert!(e.to_string().contains(&format!("position {pos}")));
        }
    }
}
