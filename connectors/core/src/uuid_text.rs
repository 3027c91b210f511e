//! UUID text (`8-4-4-4-12` hex, hyphens optional) to its 16 bytes: sources
//! receive UUIDs as text, and the lake stores them as text.

/// The bytes of a UUID's text form; None unless it is 32 hex digits.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text() {
        let bytes = parse_uuid("123e4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(bytes[0], 0x12);
        assert_eq!(bytes[15], 0x00);
        assert_eq!(parse_uuid("123E4567E89B12D3A456426614174000"), Some(bytes));
        assert_eq!(parse_uuid("123e4567"), None);
        assert_eq!(parse_uuid("zz3e4567-e89b-12d3-a456-426614174000"), None);
    }
}
