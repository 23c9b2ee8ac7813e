//! The report line format: "guest: <scenario>: PASS" (exit status 0) or
//! "guest: <scenario>: FAIL: <why>" (exit status 1).

use core::fmt;

/// Prints "guest: <scenario>: PASS" and exits with status 0, unless Vigil
/// counted a vGIC/vITS anomaly for this VM (VIGIL_ANOMALIES): a scenario
/// whose interrupts all arrived still fails if the emulation went through
/// a state that must never occur.
pub fn pass(scenario: &str) -> ! {
    if let Some(n) = crate::smccc::vigil_anomalies() {
        if n != 0 {
            fail(
                scenario,
                format_args!("Vigil counted {n} vGIC/vITS anomalies in this VM"),
            );
        }
    }
    crate::println!("{scenario}: PASS");
    crate::exit(0)
}

/// Prints "guest: <scenario>: FAIL: <why>" and exits with status 1.
pub fn fail(scenario: &str, why: fmt::Arguments<'_>) -> ! {
    crate::println!("{scenario}: FAIL: {why}");
    crate::exit(1)
}

/// `fail!(scenario, "fmt", args...)`: report a failure and exit(1).
#[macro_export]
macro_rules! fail {
    ($scenario:expr, $($arg:tt)*) => {
        $crate::report::fail($scenario, format_args!($($arg)*))
    };
}

/// `ensure!(scenario, condition, "fmt", args...)`: fail unless it holds.
#[macro_export]
macro_rules! ensure {
    ($scenario:expr, $cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($scenario, $($arg)*);
        }
    };
}
