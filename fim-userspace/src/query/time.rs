//! Times on the command line: RFC 3339 (`2026-11-28T06:20:00Z`, offsets allowed) or relative
//! to now (`30s`, `15m`, `2h`, `7d`).

use anyhow::{Context, Result, bail};

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-28T06:20:00.123Z` for ns since the epoch (UTC).
pub fn format_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let millis = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

fn number(text: &str, what: &str) -> Result<i64> {
    text.parse()
        .with_context(|| format!("{what} {text:?} is not a number"))
}

/// Nanoseconds since the epoch of `text`, relative ones counted back from `now_ns`.
pub fn parse_time(text: &str, now_ns: i64) -> Result<i64> {
    let text = text.trim();
    if let Some(unit) = text.chars().last()
        && let Some(scale) = match unit {
            's' => Some(1),
            'm' => Some(60),
            'h' => Some(3600),
            'd' => Some(86_400),
            _ => None,
        }
        && text[..text.len() - 1].chars().all(|c| c.is_ascii_digit())
        && text.len() > 1
    {
        let n = number(&text[..text.len() - 1], "duration")?;
        return Ok(now_ns.saturating_sub(n.saturating_mul(scale).saturating_mul(1_000_000_000)));
    }
    let bad = || {
        format!("{text:?} is neither RFC 3339 (2026-11-28T06:20:00Z) nor relative (30m, 2h, 7d)")
    };
    let (date, rest) = text.split_once(['T', 't', ' ']).with_context(bad)?;
    let mut ymd = date.splitn(3, '-');
    let (Some(y), Some(mo), Some(d)) = (ymd.next(), ymd.next(), ymd.next()) else {
        bail!(bad());
    };
    let (y, mo, d) = (number(y, "year")?, number(mo, "month")?, number(d, "day")?);
    // Split the clock from the zone: Z, +hh:mm or -hh:mm.
    let (clock, offset_secs) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (clock, zone) = rest.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':').with_context(bad)?;
        (
            clock,
            sign * (number(h, "offset hours")? * 3600 + number(m, "offset minutes")? * 60),
        )
    } else {
        bail!(bad());
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.splitn(3, ':');
    let (Some(h), Some(mi), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        bail!(bad());
    };
    let (h, mi, s) = (
        number(h, "hour")?,
        number(mi, "minute")?,
        number(s, "second")?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        bail!(bad());
    }
    let mut nanos = 0i64;
    if !fraction.is_empty() {
        let digits: String = fraction.chars().take(9).collect();
        nanos = number(&digits, "fraction")? * 10i64.pow(9 - digits.len() as u32);
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset_secs;
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_relative() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0).unwrap(), 0);
        assert_eq!(
            parse_time("2026-11-28T06:20:00.5Z", 0).unwrap(),
            1_795_846_800_500_000_000
        );
        assert_eq!(
            parse_time("2026-11-28T07:20:00+01:00", 0).unwrap(),
            parse_time("2026-11-28T06:20:00Z", 0).unwrap()
        );
        assert_eq!(
            parse_time("2h", 10_000_000_000_000).unwrap(),
            10_000_000_000_000 - 7_200_000_000_000
        );
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("2026-13-01T00:00:00Z", 0).is_err());
    }

    #[test]
    fn formatting_round_trips() {
        let ns = parse_time("2024-02-29T23:59:58.123Z", 0).unwrap();
        assert_eq!(format_ns(ns), "2024-02-29T23:59:58.123Z");
    }
}
