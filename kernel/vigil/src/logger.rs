//! The `log` facade on the console. The level comes from the build
//! (`VIGIL_LOG=debug cargo build ...`) and can be overridden at boot with
//! `vigil.log=<level>`.

use log::{LevelFilter, Log, Metadata, Record};

struct Logger;

static LOGGER: Logger = Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            crate::console::println_tagged(record.level().as_str(), *record.args());
        }
    }

    fn flush(&self) {}
}

/// Level compiled in, from the `VIGIL_LOG` environment variable at build.
pub fn build_level() -> LevelFilter {
    option_env!("VIGIL_LOG")
        .and_then(|s| s.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Install the logger. `boot_level` is the `vigil.log=` value, if any;
/// an unparsable one is reported and ignored.
pub fn init(boot_level: Option<&str>) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(build_level());
    if let Some(l) = boot_level {
        match l.parse::<LevelFilter>() {
            Ok(level) => log::set_max_level(level),
            Err(_) => log::warn!(
                "vigil.log={l}: not a level (off, error, warn, info, debug, trace); keeping {}",
                build_level()
            ),
        }
    }
}
