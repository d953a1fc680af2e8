//! Free text from callers (a fraud reason, a template's name, a bonus
//! description): bounded in length, and free of NUL bytes and other control
//! characters, which PostgreSQL cannot store or which corrupt logs and screens.
//! Line breaks and tabs are allowed.

/// Checks free text of at most `max_chars` characters; the error describes the
/// problem without echoing the text.
pub fn check(text: &str, max_chars: usize) -> Result<(), String> {
    if text.chars().nth(max_chars).is_some() {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if let Some(position) = text
        .chars()
        .position(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(format!(
            "must not contain control characters such as NUL (found one at character {position})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_bounded_and_free_of_control_characters() {
        assert!(check("Gold campaign\n11.11 – ünïcode", 100).is_ok());
        assert!(check(&"a".repeat(10), 10).is_ok());
        assert!(check(&"a".repeat(11), 10).is_err());
        assert!(check("nul\0byte", 100).is_err());
        assert!(check("bell\u{7}", 100).is_err());
    }
}
