//! The mutator: coverage-free havoc over bytes, plus structural edits of inputs that parse as
//! JSON (most of our surfaces are JSON, and a typed decoder rejects most byte noise early).
//!
//! Everything is driven by one seeded PRNG, so a run is reproducible from its seed and corpus.

use serde_json::Value;

/// Inputs never grow beyond this (the "repeat a chunk" mutation is how big inputs are made;
/// the bounded readers must cope with them).
pub const MAX_LEN: usize = 1 << 20;

/// Bytes that change meaning in JSON, YAML, selectors, `KEY=VALUE` lists and paths.
const INTERESTING_BYTES: &[u8] = b"\0\x7f\x80\xff\"'{}[],:;=/\\\n\r\t .-_!&|()#*%$@0";

/// Characters whose UTF-8 length is more than one byte or changes with case folding: they
/// break code that slices strings at byte offsets.
const TRICKY_CHARS: &[&str] = &[
    "é",
    "ß",
    "İ",
    "K",
    "ﬃ",
    "☃",
    "𝄞",
    "\u{0}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "ǅ",
    "Σ",
];

/// Numbers at type boundaries, as text.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "32",
    "33",
    "64",
    "128",
    "129",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e999",
    "-1e-999",
    "0.5",
    "NaN",
];

/// A mutator with its PRNG and dictionary.
pub struct Mutator {
    rng: fastrand::Rng,
    dict: Vec<Vec<u8>>,
}

impl Mutator {
    /// `tokens` are the surface's own words; the words of the corpus are added to them.
    pub fn new(seed: u64, tokens: &[&str], corpus: &[Vec<u8>]) -> Mutator {
        let mut dict: Vec<Vec<u8>> = tokens.iter().map(|t| t.as_bytes().to_vec()).collect();
        dict.extend(TRICKY_CHARS.iter().map(|t| t.as_bytes().to_vec()));
        dict.extend(INTERESTING_NUMBERS.iter().map(|t| t.as_bytes().to_vec()));
        for input in corpus {
            for word in input.split(|b| !(b.is_ascii_alphanumeric() || b"_-./:".contains(b))) {
                if (2..=64).contains(&word.len()) {
                    dict.push(word.to_vec());
                }
            }
        }
        dict.sort();
        dict.dedup();
        Mutator {
            rng: fastrand::Rng::with_seed(seed),
            dict,
        }
    }

    /// The PRNG (the engine picks corpus entries with it too).
    pub fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// A mutant of `base`; `corpus` supplies splice partners.
    pub fn mutate(&mut self, base: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        if self.rng.u8(..) < 96
            && let Ok(mut v) = serde_json::from_slice::<Value>(base)
        {
            for _ in 0..self.rng.usize(1..=3) {
                self.mutate_json(&mut v);
            }
            let out = if self.rng.bool() {
                serde_json::to_vec(&v)
            } else {
                serde_json::to_vec_pretty(&v)
            };
            if let Ok(out) = out
                && out.len() <= MAX_LEN
            {
                return out;
            }
        }
        let mut data = base.to_vec();
        for _ in 0..self.rng.usize(1..=8) {
            self.havoc(&mut data, corpus);
        }
        data.truncate(MAX_LEN);
        data
    }

    fn token(&mut self) -> Vec<u8> {
        match self.dict.len() {
            0 => b"x".to_vec(),
            n => self.dict[self.rng.usize(..n)].clone(),
        }
    }

    fn range(&mut self, len: usize) -> (usize, usize) {
        if len == 0 {
            return (0, 0);
        }
        let start = self.rng.usize(..len);
        let max = (len - start).min(if self.rng.bool() { 16 } else { len });
        (start, start + self.rng.usize(1..=max.max(1)))
    }

    /// One byte-level edit.
    fn havoc(&mut self, d: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let len = d.len();
        let at = if len == 0 { 0 } else { self.rng.usize(..=len) };
        match self.rng.u8(..14) {
            0 if len > 0 => {
                let i = self.rng.usize(..len);
                d[i] ^= 1 << self.rng.u8(..8);
            }
            1 if len > 0 => {
                let i = self.rng.usize(..len);
                d[i] = INTERESTING_BYTES[self.rng.usize(..INTERESTING_BYTES.len())];
            }
            2 if len > 0 => {
                let (s, e) = self.range(len);
                d.drain(s..e);
            }
            3 => {
                let t = self.token();
                d.splice(at..at, t);
            }
            4 if len > 0 => {
                let t = self.token();
                let i = self.rng.usize(..len);
                let end = (i + t.len()).min(len);
                d.splice(i..end, t);
            }
            5 if len > 0 => {
                let (s, e) = self.range(len);
                let chunk = d[s..e].to_vec();
                d.splice(at..at, chunk);
            }
            6 => {
                let c = TRICKY_CHARS[self.rng.usize(..TRICKY_CHARS.len())].as_bytes();
                d.splice(at..at, c.iter().copied());
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[self.rng.usize(..corpus.len())];
                let from = if other.is_empty() {
                    0
                } else {
                    self.rng.usize(..other.len())
                };
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                // Repeat a chunk: how deep nesting and oversized fields are made.
                let (s, e) = self.range(len);
                let chunk = d[s..e].to_vec();
                let times = match self.rng.u8(..4) {
                    0 => self.rng.usize(100..=20_000),
                    _ => self.rng.usize(2..=64),
                };
                let mut grown = Vec::with_capacity((len + chunk.len() * times).min(MAX_LEN + len));
                grown.extend_from_slice(&d[..e]);
                for _ in 0..times {
                    if grown.len() + chunk.len() > MAX_LEN {
                        break;
                    }
                    grown.extend_from_slice(&chunk);
                }
                grown.extend_from_slice(&d[e..]);
                *d = grown;
            }
            9 => {
                // Replace a run of digits (or insert) with a boundary number.
                let n = INTERESTING_NUMBERS[self.rng.usize(..INTERESTING_NUMBERS.len())];
                let s = d[..at]
                    .iter()
                    .rposition(|b| !b.is_ascii_digit())
                    .map_or(0, |p| p + 1);
                let e = d[at..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(len, |p| at + p);
                d.splice(s..e, n.bytes());
            }
            10 if len > 1 => {
                d.truncate(self.rng.usize(..len));
            }
            11 if len > 2 => {
                let a = self.rng.usize(..len / 2);
                let b = self.rng.usize(len / 2..len);
                d.swap(a, b);
            }
            12 => {
                let n = self.rng.usize(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
                d.splice(at..at, bytes);
            }
            _ => {
                let i = if len == 0 { 0 } else { self.rng.usize(..len) };
                d.insert(i.min(d.len()), self.rng.u8(32..127));
            }
        }
    }

    /// One structural edit of a JSON document.
    fn mutate_json(&mut self, root: &mut Value) {
        let count = count_nodes(root);
        let target = self.rng.usize(..count);
        let donor = nth_node(root, self.rng.usize(..count)).cloned();
        let mut seen = 0;
        visit_nth(root, target, &mut seen, &mut |v| {
            self.edit_node(v, donor.as_ref())
        });
    }

    fn edit_node(&mut self, v: &mut Value, donor: Option<&Value>) {
        match self.rng.u8(..10) {
            0..=2 => *v = self.scalar(),
            3 => {
                if let Some(d) = donor {
                    *v = d.clone();
                }
            }
            4 => *v = Value::Array(vec![v.take()]),
            5 => {
                let k = String::from_utf8_lossy(&self.token()).into_owned();
                let mut m = serde_json::Map::new();
                m.insert(k, v.take());
                *v = Value::Object(m);
            }
            _ => match v {
                Value::Object(m) if !m.is_empty() && self.rng.bool() => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    let k = &keys[self.rng.usize(..keys.len())];
                    if self.rng.bool() {
                        m.remove(k);
                    } else if let Some(val) = m.remove(k) {
                        let nk = String::from_utf8_lossy(&self.token()).into_owned();
                        m.insert(nk, val);
                    }
                }
                Value::Object(m) => {
                    let k = String::from_utf8_lossy(&self.token()).into_owned();
                    let val = self.scalar();
                    m.insert(k, val);
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = self.rng.usize(..a.len());
                    match self.rng.u8(..3) {
                        0 => {
                            a.remove(i);
                        }
                        1 => {
                            let copy = a[i].clone();
                            let n = self.rng.usize(1..=200);
                            a.extend(std::iter::repeat_n(copy, n));
                        }
                        _ => {
                            let s = self.scalar();
                            a.insert(i, s);
                        }
                    }
                }
                Value::String(s) => {
                    let mut bytes = s.clone().into_bytes();
                    self.havoc(&mut bytes, &[]);
                    *s = String::from_utf8_lossy(&bytes).into_owned();
                }
                _ => *v = self.scalar(),
            },
        }
    }

    fn scalar(&mut self) -> Value {
        match self.rng.u8(..9) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.bool()),
            2 => {
                let n = INTERESTING_NUMBERS[self.rng.usize(..INTERESTING_NUMBERS.len())];
                serde_json::from_str(n).unwrap_or(Value::Null)
            }
            3 => Value::String(String::new()),
            4 => {
                let c = TRICKY_CHARS[self.rng.usize(..TRICKY_CHARS.len())];
                Value::String(c.repeat(self.rng.usize(1..=300)))
            }
            5 => Value::String("a".repeat(self.rng.usize(200..=100_000))),
            6 => Value::Array(Vec::new()),
            7 => Value::Object(serde_json::Map::new()),
            _ => Value::String(String::from_utf8_lossy(&self.token()).into_owned()),
        }
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(m) => m.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn nth_node(v: &Value, n: usize) -> Option<&Value> {
    fn go<'a>(v: &'a Value, n: usize, seen: &mut usize) -> Option<&'a Value> {
        if *seen == n {
            return Some(v);
        }
        *seen += 1;
        match v {
            Value::Array(a) => a.iter().find_map(|c| go(c, n, seen)),
            Value::Object(m) => m.values().find_map(|c| go(c, n, seen)),
            _ => None,
        }
    }
    go(v, n, &mut 0)
}

/// Calls `f` on the `n`th node in pre-order; returns true once done.
fn visit_nth(v: &mut Value, n: usize, seen: &mut usize, f: &mut dyn FnMut(&mut Value)) -> bool {
    if *seen == n {
        f(v);
        return true;
    }
    *seen += 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|c| visit_nth(c, n, seen, f)),
        Value::Object(m) => m.values_mut().any(|c| visit_nth(c, n, seen, f)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_differ_and_stay_bounded() {
        let seed = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"calico-ipam"}}"#.to_vec();
        let corpus = vec![seed.clone()];
        let mut m = Mutator::new(1, &["nodeSelector"], &corpus);
        let mut changed = 0;
        for _ in 0..2000 {
            let out = m.mutate(&seed, &corpus);
            assert!(out.len() <= MAX_LEN);
            if out != seed {
                changed += 1;
            }
        }
        assert!(changed > 1900, "only {changed} of 2000 mutants differ");
    }

    #[test]
    fn same_seed_same_mutants() {
        let corpus = vec![b"all()".to_vec()];
        let run = |seed| {
            let mut m = Mutator::new(seed, &[], &corpus);
            (0..50)
                .map(|_| m.mutate(b"all()", &corpus))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
