//! Unix time: the one reading of the clock as unix seconds
//! ([`unix_now`]), and unix time as calendar dates (UTC) for what people
//! and receivers read (the web UI's times, notification timestamps). The
//! conversions are pure code (Howard Hinnant's days-to-civil algorithm),
//! with no time-zone database.

/// Seconds since the epoch now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the epoch now (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (year, month, day, hour, minute, second) of `secs` after the epoch.
pub fn civil(secs: u64) -> (i64, u64, u64, u64, u64, u64) {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rest / 3600, rest % 3600 / 60, rest % 60)
}

/// RFC 3339 in UTC with nanoseconds, as distribution's events carry.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil(since.as_secs());
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
        since.subsec_nanos()
    )
}

/// Unix seconds of a UTC date as people and scripts write one:
/// `2026-12-05`, `2026-12-05T15:20:00Z` (or with a space, without the
/// `Z`, without seconds), or unix seconds themselves.
pub fn parse_utc(text: &str) -> Option<u64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return None;
    }
    let (mut h, mut mi, mut s) = (0, 0, 0);
    if let Some(tm) = time {
        let mut p = tm.split(':').map(|x| x.parse::<i64>().ok());
        h = p.next()??;
        mi = p.next()??;
        s = p.next().unwrap_or(Some(0))?;
        if p.next().is_some() || h > 23 || mi > 59 || s > 60 {
            return None;
        }
    }
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()
}

/// `2026-12-05 15:20 UTC`: a time as people read it in a terminal.
pub fn utc_minute(secs: u64) -> String {
    let (y, mo, d, h, mi, _) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn known_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_798_761_599), (2026, 12, 31, 23, 59, 59));
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(1_764_633_600, 5)),
            "2025-12-02T00:00:00.000000005Z"
        );
        assert_eq!(utc_minute(1_798_761_599), "2026-12-31 23:59 UTC");
        assert_eq!(parse_utc("2026-12-31T23:59:59Z"), Some(1_798_761_599));
        assert_eq!(parse_utc("2000-02-29"), Some(951_782_400));
        assert_eq!(parse_utc("2026-12-31 23:59"), Some(1_798_761_540));
        assert_eq!(parse_utc("1798761599"), Some(1_798_761_599));
        for bad in ["", "yesterday", "2026-13-01", "2026-12-05T25:00", "2026-12"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
