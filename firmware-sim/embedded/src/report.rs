//! The self-test's verdicts, printed through semihosting, and the exit status they decide.

use cortex_m_semihosting::{debug, hprintln};

/// Tally of checks; the image exits with success only if no check failed and at least one ran.
#[derive(Default)]
pub struct Report {
    passed: u32,
    failed: u32,
    /// Printed before each check's name: which variant of a suite is running.
    scope: &'static str,
}

impl Report {
    /// An empty tally.
    pub const fn new() -> Self {
        Self {
            passed: 0,
            failed: 0,
            scope: "",
        }
    }

    /// Names the variant of a suite that the next checks belong to ("" for none).
    pub fn set_scope(&mut self, scope: &'static str) {
        self.scope = scope;
    }

    /// Records one check and prints its verdict.
    pub fn check(&mut self, name: &str, ok: bool) -> bool {
        if ok {
            self.passed += 1;
            hprintln!("ok   {}{}", self.scope, name);
        } else {
            self.failed += 1;
            hprintln!("FAIL {}{}", self.scope, name);
        }
        ok
    }

    /// Records a check whose outcome is a `Result`, printing the error on failure.
    pub fn check_ok<T, E: core::fmt::Debug>(&mut self, name: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => {
                self.check(name, true);
                Some(v)
            }
            Err(e) => {
                self.failed += 1;
                hprintln!("FAIL {}{}: {:?}", self.scope, name, e);
                None
            }
        }
    }

    /// Prints the closing tally and ends the run: exit status 0 only if every check passed.
    pub fn finish(self) -> ! {
        hprintln!("selftest: {} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 && self.passed > 0 {
            debug::exit(debug::EXIT_SUCCESS);
        } else {
            debug::exit(debug::EXIT_FAILURE);
        }
        // Only reached if no debugger or QEMU is listening to semihosting.
        cortex_m::asm::udf()
    }
}
