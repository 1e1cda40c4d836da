//! Aligned plain-text tables.

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Left (text).
    Left,
    /// Right (numbers).
    Right,
}

/// Renders rows under headers, each column as wide as its widest cell.
pub fn render(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let (w, a) = (widths[i], headers[i].1);
            if i > 0 {
                s.push_str("  ");
            }
            match a {
                Align::Left => s.push_str(&format!("{c:<w$}")),
                Align::Right => s.push_str(&format!("{c:>w$}")),
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|(h, _)| *h).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// 1234567 → "1.23M".
pub fn human(v: f64) -> String {
    let (d, s) = match v.abs() {
        x if x >= 1e9 => (1e9, "G"),
        x if x >= 1e6 => (1e6, "M"),
        x if x >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    if s.is_empty() {
        format!("{v:.0}")
    } else {
        format!("{:.2}{s}", v / d)
    }
}
