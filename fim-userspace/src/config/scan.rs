//! `[scan]`: the scheduled full scan (how often, with how much random spread), and the
//! duration syntax its settings use.

use std::time::Duration;

/// Between the end of one full scan and the next scheduled one, by default.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// The default spread is this fraction of the interval ...
const DEFAULT_SPREAD_DIVISOR: u32 = 10;
/// ... and at most this.
pub const MAX_DEFAULT_SPREAD: Duration = Duration::from_secs(3600);
/// Longer intervals are refused (a typo such as "1000d" is more likely than the intent).
pub const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(366 * 86_400);

/// When the daemon compares every watched path with the baseline on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSchedule {
    /// From the end of one full scan (the start scan included) to the next scheduled one;
    /// `None`: no scheduled scans (`interval = "0"`).
    pub interval: Option<Duration>,
    /// Each wait gets a random extra delay of up to this, so hosts started together do not
    /// all scan at the same moment.
    pub spread: Duration,
}

impl Default for ScanSchedule {
    fn default() -> Self {
        ScanSchedule::new(Some(DEFAULT_SCAN_INTERVAL), None)
    }
}

impl ScanSchedule {
    /// The schedule for `interval`, with `spread` or else the default spread for it.
    pub fn new(interval: Option<Duration>, spread: Option<Duration>) -> ScanSchedule {
        let spread = match (interval, spread) {
            (None, _) => Duration::ZERO,
            (Some(_), Some(spread)) => spread,
            (Some(interval), None) => default_spread(interval),
        };
        ScanSchedule { interval, spread }
    }

    /// How long to wait from the end of a full scan to the next scheduled one, given a
    /// uniformly random `random` (any `u64`); `None` when scheduled scans are off.
    pub fn next_wait(&self, random: u64) -> Option<Duration> {
        let interval = self.interval?;
        let spread_ms = self.spread.as_millis() as u64;
        let extra = if spread_ms == 0 {
            0
        } else {
            random % (spread_ms + 1)
        };
        Some(interval + Duration::from_millis(extra))
    }
}

/// A tenth of the interval, at most an hour.
pub fn default_spread(interval: Duration) -> Duration {
    (interval / DEFAULT_SPREAD_DIVISOR).min(MAX_DEFAULT_SPREAD)
}

/// Parses a duration: `0`, or one or more `<whole number><unit>` groups with the units `s`,
/// `m`, `h` and `d`, largest first, each at most once (`"12h"`, `"30m"`, `"1h30m"`, `"2s"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)];
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty".to_string());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    // The index in UNITS below which the next unit must be (largest first, each once).
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("the number {:?} is too large", &rest[..digits]))?;
        let unit = rest[digits..].chars().next().ok_or_else(|| {
            format!("{number} has no unit (write s, m, h or d after it, e.g. \"{number}h\")")
        })?;
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!(
                "unknown unit {unit:?} (use s, m, h or d, e.g. \"12h\" or \"1h30m\")"
            ));
        };
        if index < next_unit {
            return Err(
                "units must go from largest to smallest, each once (e.g. \"1h30m\")".into(),
            );
        }
        next_unit = index + 1;
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| "too large".to_string())?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

/// A duration the way [`parse_duration`] reads it: `"12h"`, `"1h30m"`, `"0"`; below a second,
/// in milliseconds (`"250ms"`), which only the random spread of a tiny interval produces.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0".to_string();
    }
    let mut secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn durations_parse_with_units_largest_first() {
        let ok = |text: &str| parse_duration(text).unwrap().as_secs();
        assert_eq!(ok("12h"), 12 * H);
        assert_eq!(ok("30m"), 1800);
        assert_eq!(ok("2s"), 2);
        assert_eq!(ok("1d"), 24 * H);
        assert_eq!(ok("1h30m"), 5400);
        assert_eq!(ok("1d2h3m4s"), 86_400 + 2 * H + 184);
        assert_eq!(ok(" 90s "), 90);
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("0s"), 0);
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        let err = |text: &str| parse_duration(text).unwrap_err();
        assert!(err("12").contains("no unit"), "{}", err("12"));
        assert!(err("12x").contains("unknown unit 'x'"), "{}", err("12x"));
        assert!(err("h").contains("expected a number"), "{}", err("h"));
        assert!(err("").contains("empty"));
        assert!(err("30m1h").contains("largest to smallest"));
        assert!(err("1h1h").contains("largest to smallest"));
        assert!(err("1.5h").contains("unknown unit '.'"), "{}", err("1.5h"));
        assert!(err("-1h").contains("expected a number"));
        assert!(err("99999999999999999999s").contains("too large"));
        assert!(err("9999999999999999999d").contains("too large"));
    }

    #[test]
    fn durations_print_the_way_they_parse() {
        for text in ["12h", "30m", "2s", "1h30m", "1d2h3m4s", "0"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn the_default_spread_is_a_tenth_of_the_interval_at_most_an_hour() {
        let schedule = ScanSchedule::default();
        assert_eq!(schedule.interval, Some(Duration::from_secs(12 * H)));
        assert_eq!(schedule.spread, Duration::from_secs(H));
        let short = ScanSchedule::new(Some(Duration::from_secs(600)), None);
        assert_eq!(short.spread, Duration::from_secs(60));
        let given = ScanSchedule::new(Some(Duration::from_secs(600)), Some(Duration::ZERO));
        assert_eq!(given.spread, Duration::ZERO);
        let off = ScanSchedule::new(None, Some(Duration::from_secs(60)));
        assert_eq!(off.spread, Duration::ZERO);
    }

    #[test]
    fn the_wait_is_the_interval_plus_up_to_the_spread() {
        let schedule = ScanSchedule::new(
            Some(Duration::from_secs(12 * H)),
            Some(Duration::from_secs(H)),
        );
        let interval = Duration::from_secs(12 * H);
        assert_eq!(schedule.next_wait(0), Some(interval));
        // The largest value reaches the whole spread, never more.
        let spread_ms = H * 1000;
        assert_eq!(
            schedule.next_wait(spread_ms),
            Some(interval + Duration::from_secs(H))
        );
        for random in [1, 12_345, u64::MAX, u64::MAX / 3, spread_ms + 1] {
            let wait = schedule.next_wait(random).unwrap();
            assert!(wait >= interval && wait <= interval + Duration::from_secs(H));
        }
        // Spread over many draws: not all at one end.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let waits: Vec<Duration> = (0..1000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                schedule.next_wait(seed).unwrap() - interval
            })
            .collect();
        let half = Duration::from_secs(H / 2);
        let early = waits.iter().filter(|w| **w < half).count();
        assert!(
            (350..=650).contains(&early),
            "{early} of 1000 in the first half"
        );
        // No spread: exactly the interval; off: no wait at all.
        let exact = ScanSchedule::new(Some(Duration::from_secs(2)), Some(Duration::ZERO));
        assert_eq!(exact.next_wait(u64::MAX), Some(Duration::from_secs(2)));
        assert_eq!(ScanSchedule::new(None, None).next_wait(7), None);
    }
}
