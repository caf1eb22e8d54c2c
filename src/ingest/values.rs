//! Field values from their text, for validation at landing: decimals as hundredths, integers,
//! and instants (RFC 3339; for source mappings also ISO-like text and the source's declared
//! formats; in CSV epoch digits), with the hint a quarantine detail gives for a near miss.

/// Parses a decimal number text into hundredths, rounding half away from zero.
/// `None` if it is not a plain number or exceeds decimal(18,2).
pub fn parse_decimal_2(text: &str) -> Option<i128> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if t.contains(['e', 'E']) {
        let f: f64 = t.parse().ok()?;
        if !f.is_finite() {
            return None;
        }
        let v = (f * 100.0).round();
        return (v.abs() < 1e18).then_some(v as i128);
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) || (body.contains('.') && frac.is_empty()) {
        return None;
    }
    if int.len() > 16 {
        return None;
    }
    let mut v: i128 = int.parse().ok()?;
    let fb = frac.as_bytes();
    let d1 = fb.first().map(|c| (c - b'0') as i128).unwrap_or(0);
    let d2 = fb.get(1).map(|c| (c - b'0') as i128).unwrap_or(0);
    v = v * 100 + d1 * 10 + d2;
    if fb.get(2).is_some_and(|c| *c >= b'5') {
        v += 1;
    }
    if v >= 10i128.pow(18) {
        return None;
    }
    Some(if neg { -v } else { v })
}

pub(super) fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Parses an RFC 3339 instant into UTC microseconds.
pub fn parse_rfc3339_us(text: &str) -> Option<i64> {
    let dt = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    Some(dt.timestamp_micros())
}

/// Formats every source mapping accepts besides RFC 3339: ISO-like text with a space or `T`, an
/// optional fraction and an optional offset (no offset = UTC).
const SOURCE_TIMESTAMP_FORMATS: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"];

/// Parses `text` with a chrono format: with an offset if the format or text carries one, else as
/// UTC.
fn parse_with_format(text: &str, format: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_str(text, format) {
        return Some(dt.timestamp_micros());
    }
    if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(text, format) {
        return Some(dt.and_utc().timestamp_micros());
    }
    // The same format followed by an offset (`+00:00`, `+0000`, `Z`).
    for suffix in ["%#z", "Z"] {
        let with = format!("{format}{suffix}");
        if suffix == "Z" {
            if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(text, &with) {
                return Some(dt.and_utc().timestamp_micros());
            }
        } else if let Ok(dt) = chrono::DateTime::parse_from_str(text, &with) {
            return Some(dt.timestamp_micros());
        }
    }
    None
}

/// Parses a timestamp text: RFC 3339, then (for source mappings, `formats` is `Some`) the ISO-like
/// defaults and the source's declared formats.
pub(super) fn parse_instant(text: &str, formats: Option<&[String]>) -> Option<i64> {
    if let Some(us) = parse_rfc3339_us(text) {
        return Some(us);
    }
    let formats = formats?;
    SOURCE_TIMESTAMP_FORMATS
        .iter()
        .copied()
        .chain(formats.iter().map(String::as_str))
        .find_map(|f| parse_with_format(text, f))
}

/// The detail's hint for epoch digits in the native JSON schema.
pub(super) const EPOCH_HINT: &str =
    ": send text such as \"2026-01-05T10:00:00Z\" (epoch digits are read from CSV only)";

/// What to change in a text that is an ISO 8601 date and time but not RFC 3339, for the
/// quarantine's detail (a producer's fix is then one line): no time zone at all (which would be
/// a guess), or an offset without its colon. Empty for anything else.
pub(super) fn rfc3339_hint(text: &str) -> &'static str {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return EPOCH_HINT;
    }
    let local = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"];
    if local
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(text, f).is_ok())
    {
        return ": it has no time zone (add Z for UTC, or its offset, e.g. +01:00)";
    }
    if local
        .iter()
        .any(|f| chrono::DateTime::parse_from_str(text, &format!("{f}%#z")).is_ok())
    {
        return ": write its offset as ±HH:MM (e.g. +01:00)";
    }
    ""
}

/// CSV exports carry epoch times as plain digits; the unit follows from their count, as every
/// instant from 2001-09-09 to 2286-11-20 has 10 digits in seconds, 13 in milliseconds, 16 in
/// microseconds and 19 in nanoseconds. Any other count is no time a clickstream holds (`0`, a
/// clock that was never set, a truncated value): `None`, quarantined, not landed in 1970.
pub(super) fn epoch_us(digits: &str) -> Option<i64> {
    let n: i64 = digits.parse().ok()?;
    match digits.len() {
        10 => n.checked_mul(1_000_000),
        13 => n.checked_mul(1_000),
        16 => Some(n),
        19 => Some(n / 1_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_number_is_read_in_the_unit_its_digits_give() {
        // 2025-11-20T10:00:00Z in each unit.
        let us = 1_763_632_800_000_000;
        assert_eq!(epoch_us("1763632800"), Some(us));
        assert_eq!(epoch_us("1763632800000"), Some(us));
        assert_eq!(epoch_us("1763632800000000"), Some(us));
        assert_eq!(epoch_us("1763632800000000123"), Some(us));
        // Never set, cut short, or too long: no time at all.
        for bad in ["0", "176363280", "17636328000", "99999999999999999999"] {
            assert_eq!(epoch_us(bad), None, "{bad}");
        }
    }

    #[test]
    fn decimals_round_and_reject() {
        assert_eq!(parse_decimal_2("12.5"), Some(1250));
        assert_eq!(parse_decimal_2("12.345"), Some(1235));
        assert_eq!(parse_decimal_2("-0.004"), Some(0));
        assert_eq!(parse_decimal_2("7"), Some(700));
        assert_eq!(parse_decimal_2("1e2"), Some(10000));
        assert_eq!(parse_decimal_2("12,50"), None);
        assert_eq!(parse_decimal_2("12."), None);
        assert_eq!(parse_decimal_2("99999999999999999"), None);
    }

    #[test]
    fn timestamps_with_offsets_are_utc() {
        let z = parse_rfc3339_us("2026-01-05T10:00:00Z").unwrap();
        let off = parse_rfc3339_us("2026-01-05T12:00:00+02:00").unwrap();
        assert_eq!(z, off);
        assert!(parse_rfc3339_us("2026-02-30T10:00:00Z").is_none());
    }
}
