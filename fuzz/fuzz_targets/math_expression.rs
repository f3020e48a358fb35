//! Fuzzes the `math_expression` parser and evaluator: user-supplied expressions must never panic
//! (deep nesting, huge literals, odd characters), and neither must evaluating a parsed one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trempy_protocol::transform::expr::{Expression, Mode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The input's first line is the expression; the rest are column values to evaluate it on.
    let mut lines = text.lines();
    let Some(source) = lines.next() else {
        return;
    };
    match Expression::parse(source) {
        Ok(expression) => {
            let _ = expression.is_integral();
            for value in lines.chain(["0", "-1", "12.50", "NaN", "-Infinity", "99999999999999999999999999999999999999"])
            {
                let _ = expression.evaluate(value, Mode::Exact);
                let _ = expression.evaluate(value, Mode::Float);
            }
        }
        Err(error) => {
            // positions are 1-based and point at most one past the end
            assert!(error.position >= 1 && error.position <= source.chars().count() + 1);
        }
    }
});
