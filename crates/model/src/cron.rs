//! Cron schedules, parsed by `croner`: five fields, or six with seconds first, and `@hourly`-style
//! nicknames. Times are evaluated in the machine's local time zone.

pub use croner::Cron;

/// Parses a cron expression, returning a readable reason on failure.
pub fn parse(expr: &str) -> Result<Cron, String> {
    if expr.len() > 256 {
        return Err("expression longer than 256 characters".into());
    }
    expr.parse::<Cron>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_forms_and_rejects_garbage() {
        for ok in ["*/5 * * * *", "0 3 * * MON-FRI", "@hourly", "*/10 * * * * *"] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "61 * * * *", "* * *", "every minute", "* * * * * * * *"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
