//! Decimal text → the unscaled integer an Arrow decimal stores, shared by the
//! sources that receive decimals as text (Postgres output, MySQL's binary
//! protocol).

/// The unscaled integer digits of a decimal text at `scale`, e.g. ("-1.5", 2)
/// → "-150". None for anything but plain decimal digits (NaN, Infinity,
/// exponents) or more fraction digits than the scale.
pub fn scaled_digits(text: &str, scale: i8) -> Option<String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    let scale = usize::try_from(scale).ok()?;
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || frac_part.len() > scale
    {
        return None;
    }
    let mut digits = String::with_capacity(body.len() + scale + 1);
    if negative {
        digits.push('-');
    }
    digits.push_str(if int_part.is_empty() { "0" } else { int_part });
    digits.push_str(frac_part);
    digits.extend(std::iter::repeat_n('0', scale - frac_part.len()));
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        assert_eq!(scaled_digits("-1.5", 2).as_deref(), Some("-150"));
        assert_eq!(scaled_digits(".5", 1).as_deref(), Some("05"));
        assert_eq!(scaled_digits("12", 0).as_deref(), Some("12"));
        assert_eq!(scaled_digits("1.234", 2), None);
        assert_eq!(scaled_digits("NaN", 2), None);
        assert_eq!(scaled_digits("1e5", 2), None);
    }
}
