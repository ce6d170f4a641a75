//! Restart delays: capped exponential backoff, reset by a stable worker.

use std::time::Duration;

/// The delay before restart number `consecutive_failures` (1 for the first failure):
/// `initial * 2^(failures-1)`, capped at `max`.
pub fn delay(initial: Duration, max: Duration, consecutive_failures: u32) -> Duration {
    if consecutive_failures == 0 {
        return Duration::ZERO;
    }
    let exponent = (consecutive_failures - 1).min(32);
    initial
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_stops_at_the_cap() {
        let ms = Duration::from_millis;
        let seq: Vec<Duration> = (1..=12).map(|n| delay(ms(100), ms(30_000), n)).collect();
        assert_eq!(&seq[..4], &[ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(seq[8], ms(25_600));
        assert_eq!(seq[9], ms(30_000));
        assert_eq!(seq[11], ms(30_000));
    }

    #[test]
    fn no_failure_means_no_delay_and_huge_counts_do_not_overflow() {
        assert_eq!(
            delay(Duration::from_secs(1), Duration::from_secs(30), 0),
            Duration::ZERO
        );
        assert_eq!(
            delay(Duration::from_secs(1), Duration::from_secs(30), u32::MAX),
            Duration::from_secs(30)
        );
    }
}
