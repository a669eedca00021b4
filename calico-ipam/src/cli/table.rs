//! Output as calicoctl prints it: boxed tables (olekukonko/tablewriter, used by `ipam show`),
//! column tables (Go's text/tabwriter, used by `get`), and Go's `%.5g` / `%.f` numbers.

/// A boxed table as tablewriter v0.0.5 renders it by default: headers centred, cells that look
/// like decimal numbers right-aligned, everything else left-aligned.
pub fn boxed(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule: String = widths.iter().fold(String::from("+"), |mut s, w| {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
        s
    });
    let mut out = format!("{rule}\n|");
    for (h, w) in header.iter().zip(&widths) {
        // tablewriter centres with the extra space on the right.
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            " {}{h}{} |",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    out.push_str(&format!("\n{rule}\n"));
    for row in rows {
        out.push('|');
        for (cell, w) in row.iter().zip(&widths) {
            if looks_decimal(cell) {
                out.push_str(&format!(" {cell:>w$} |"));
            } else {
                out.push_str(&format!(" {cell:<w$} |"));
            }
        }
        out.push('\n');
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

/// tablewriter's `^-?(?:\d{1,3}(?:,\d{3})*|\d+)(?:\.\d+)?$`, simplified to what we print
/// (no thousands separators): an optional minus, digits, an optional fraction.
fn looks_decimal(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

/// Columns as calicoctl's `get` prints them (tabwriter: minimum width 5, padding 3), followed
/// by the blank line calicoctl leaves after each table.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                let w = (w + 3).max(5);
                s.push_str(&format!("{c:<w$}"));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push('\n');
    out
}

/// Go's `fmt.Sprintf("%.5g", v)`: five significant digits, exponent form when the exponent is
/// below -4 or at least 5 (`65536`, `1.3107e+05`, `1.2089e+24`), trailing zeros dropped.
pub fn go_g5(v: f64) -> String {
    const PREC: i32 = 5;
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.*e}", (PREC - 1) as usize, v);
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..PREC).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_zeros(mantissa), exp.abs())
    } else {
        let decimals = (PREC - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Go's `%.f`: no decimals, ties to even (as strconv rounds exact halves).
pub fn go_f0(v: f64) -> String {
    format!("{v:.0}")
}

/// calicoctl's usage cell: `%.5g (%.f%%)`.
pub fn with_percentage(n: f64, capacity: f64) -> String {
    let pct = if capacity > 0.0 {
        100.0 * n / capacity
    } else {
        f64::NAN
    };
    format!("{} ({}%)", go_g5(n), go_f0(pct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_g_matches_go() {
        // Expected values printed by Go 1.24's fmt.Sprintf("%.5g", v).
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (64.0, "64"),
            (65536.0, "65536"),
            (99999.0, "99999"),
            (99999.5, "1e+05"),
            (131072.0, "1.3107e+05"),
            (1048576.0, "1.0486e+06"),
            (123455.0, "1.2346e+05"),
            (2f64.powi(80), "1.2089e+24"),
            (2f64.powi(64), "1.8447e+19"),
            (2f64.powi(128), "3.4028e+38"),
            (0.5, "0.5"),
            (0.00001, "1e-05"),
        ] {
            assert_eq!(go_g5(v), want, "{v}");
        }
    }

    #[test]
    fn percentages_round_like_go() {
        // Go: %.f of 12.5 is 12 and of 37.5 is 38 (ties to even); 99.6 is 100.
        assert_eq!(with_percentage(1.0, 8.0), "1 (12%)");
        assert_eq!(with_percentage(3.0, 8.0), "3 (38%)");
        assert_eq!(with_percentage(5.0, 8.0), "5 (62%)");
        assert_eq!(with_percentage(249.0, 250.0), "249 (100%)");
        assert_eq!(with_percentage(2.0, 3.0), "2 (67%)");
        assert_eq!(
            with_percentage(2f64.powi(80) - 7.0, 2f64.powi(80)),
            "1.2089e+24 (100%)"
        );
    }

    #[test]
    fn boxed_like_tablewriter() {
        let t = boxed(
            &["GROUPING", "CIDR", "IPS TOTAL"],
            &[vec!["IP Pool".into(), "10.0.0.0/16".into(), "65536".into()]],
        );
        assert_eq!(
            t,
            "+----------+-------------+-----------+\n\
             | GROUPING |    CIDR     | IPS TOTAL |\n\
             +----------+-------------+-----------+\n\
             | IP Pool  | 10.0.0.0/16 |     65536 |\n\
             +----------+-------------+-----------+\n"
        );
    }

    #[test]
    fn columns_like_tabwriter() {
        let t = columns(
            &["NAME", "CIDR", "SELECTOR"],
            &[vec!["p".into(), "10.0.0.0/16".into(), "all()".into()]],
        );
        assert_eq!(
            t,
            "NAME   CIDR          SELECTOR\np      10.0.0.0/16   all()\n\n"
        );
    }
}
