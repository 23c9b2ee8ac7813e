//! The report line format: "guest: <scenario>: PASS" (exit status 0) or
//! "guest: <scenario>: FAIL: <why>" (exit status 1).

use core::fmt;

/// Prints "guest: <scenario>: PASS" and exits with status 0.
pub fn pass(scenario: &str) -> ! {
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
