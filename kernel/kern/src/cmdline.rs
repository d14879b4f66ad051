//! The kernel command line: space-separated words, `key=value` or bare flags.

/// The value of `key=value` on the command line, if present (last one wins).
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// Whether the bare word `flag` (or `flag=1`/`flag=on`) is on the command line.
pub fn flag(cmdline: &str, flag: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == flag)
        || matches!(value(cmdline, flag), Some("1" | "on" | "yes" | "true"))
}

/// The log level from `log=error|warn|info|debug|trace` (default info).
pub fn log_level(cmdline: &str) -> log::LevelFilter {
    match value(cmdline, "log") {
        Some("off") => log::LevelFilter::Off,
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_flags() {
        let c = "log=debug keel.test  foo=1 log=warn";
        assert_eq!(value(c, "log"), Some("warn"));
        assert_eq!(value(c, "bar"), None);
        assert!(flag(c, "keel.test"));
        assert!(flag(c, "foo"));
        assert!(!flag(c, "keel"));
        assert_eq!(log_level(c), log::LevelFilter::Warn);
        assert_eq!(log_level(""), log::LevelFilter::Info);
    }
}
