//! `Debug` for error types that prints their message.
//!
//! `fn main() -> Result<(), Box<dyn Error>>` prints a failed `main`'s error with `{:?}`; a
//! derived `Debug` would show the user a struct dump (`ConfigError { origin: …, problem:
//! OwnPidAbsent(9) }`) instead of the message. So the public errors print their message,
//! then the causes it does not already include, as `anyhow` does.

use std::error::Error;
use std::fmt;

/// Writes `error`'s message and, below it, each source whose message it does not contain.
pub(crate) fn write_message(error: &dyn Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let message = error.to_string();
    f.write_str(&message)?;
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            write!(f, "\n\nCaused by: {text}")?;
        }
        source = cause.source();
    }
    Ok(())
}

/// Implements `Debug` as [`write_message`] for error types.
macro_rules! debug_as_message {
    ($($t:ty),* $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::report::write_message(self, f)
            }
        }
    )*};
}
pub(crate) use debug_as_message;

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigProblem, ServerError, TransportError};

    #[test]
    fn errors_returned_from_main_print_their_message() {
        let config = Config::parse(
            r#"{"peers":[{"pid":1,"address":"127.0.0.1:7001"}]}"#,
            "c.json",
        )
        .unwrap();
        let e = config.check_member(9).unwrap_err();
        assert!(matches!(e.problem, ConfigProblem::OwnPidAbsent(9)));
        let boxed: Box<dyn std::error::Error> = Box::new(ServerError::from(e.clone()));
        // What `main() -> Result<(), Box<dyn Error>>` prints after "Error: ".
        let shown = format!("{boxed:?}");
        assert_eq!(shown, e.to_string());
        assert!(
            shown.starts_with("c.json") && shown.contains('9'),
            "{shown}"
        );
        assert!(!shown.contains("ConfigError {"), "{shown}");

        let t = TransportError::Bind {
            address: "127.0.0.1:1".into(),
            reason: "in use".into(),
        };
        assert_eq!(format!("{t:?}"), t.to_string());
        assert_eq!(
            format!("{:?}", ServerError::from(t)),
            "cannot listen on 127.0.0.1:1: in use"
        );
    }
}
