//! The one piece of ACPI Machine Language the kernel reads: the `\_S5` object of the
//! DSDT, whose first two package elements are the `SLP_TYPa`/`SLP_TYPb` values that put
//! the machine in sleep state S5 (soft off). It is found by its encoding, not by running
//! AML: `NameOp "_S5_" PackageOp PkgLength NumElements elements...`, where the elements
//! are integer constants (ZeroOp, OneOp, BytePrefix, WordPrefix, DWordPrefix).

/// AML NameOp.
const NAME_OP: u8 = 0x08;
/// AML PackageOp.
const PACKAGE_OP: u8 = 0x12;
/// AML RootChar (`\`), which may precede the name.
const ROOT_CHAR: u8 = 0x5c;

/// The S5 sleep types (`SLP_TYPa`, `SLP_TYPb`) from the DSDT's AML `dsdt` (the table
/// body or the whole table), or `None` when there is no `_S5_` package of integer
/// constants.
pub fn s5_sleep_types(dsdt: &[u8]) -> Option<(u8, u8)> {
    let mut from = 0;
    while let Some(found) = find(&dsdt[from..], b"_S5_") {
        let at = from + found;
        from = at + 1;
        let named = match at {
            0 => false,
            1 => dsdt[0] == NAME_OP,
            _ => dsdt[at - 1] == NAME_OP || (dsdt[at - 1] == ROOT_CHAR && dsdt[at - 2] == NAME_OP),
        };
        if !named {
            continue;
        }
        if let Some(types) = package_of_two(&dsdt[at + 4..]) {
            return Some(types);
        }
    }
    None
}

/// The first two integer elements of the package that starts `aml`.
fn package_of_two(aml: &[u8]) -> Option<(u8, u8)> {
    let (&op, rest) = aml.split_first()?;
    if op != PACKAGE_OP {
        return None;
    }
    let (&lead, _) = rest.split_first()?;
    // PkgLength: bits 7-6 of the lead byte count the bytes that follow it.
    let length_bytes = 1 + (lead >> 6) as usize;
    let rest = rest.get(length_bytes..)?;
    let (&elements, mut rest) = rest.split_first()?;
    if elements < 2 {
        return None;
    }
    let mut values = [0u8; 2];
    for value in &mut values {
        let (integer, after) = integer(rest)?;
        *value = integer as u8;
        rest = after;
    }
    Some((values[0], values[1]))
}

/// An integer constant at the start of `aml` and what follows it.
fn integer(aml: &[u8]) -> Option<(u64, &[u8])> {
    let (&op, rest) = aml.split_first()?;
    let bytes = match op {
        0x00 => return Some((0, rest)), // ZeroOp
        0x01 => return Some((1, rest)), // OneOp
        0x0a => 1,                      // BytePrefix
        0x0b => 2,                      // WordPrefix
        0x0c => 4,                      // DWordPrefix
        _ => return None,
    };
    let data = rest.get(..bytes)?;
    let value = data
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64);
    Some((value, &rest[bytes..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_of_zero_ops() {
        // Name (_S5, Package (0x04) { Zero, Zero, Zero, Zero }) after other AML.
        let aml = [
            0x10, 0x05, b'_', b'S', b'B', b'_', 0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04,
            0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(s5_sleep_types(&aml), Some((0, 0)));
    }

    #[test]
    fn byte_prefixed_values_and_root_prefix() {
        // Name (\_S5, Package (0x02) { 0x05, 0x07 }).
        let aml = [
            0x08, 0x5c, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x02, 0x0a, 0x05, 0x0a, 0x07,
        ];
        assert_eq!(s5_sleep_types(&aml), Some((5, 7)));
    }

    #[test]
    fn two_byte_package_length_and_one_op() {
        let aml = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x40, 0x00, 0x02, 0x01, 0x0b, 0x02, 0x00,
        ];
        assert_eq!(s5_sleep_types(&aml), Some((1, 2)));
    }

    #[test]
    fn a_reference_that_is_not_a_name_is_skipped() {
        // A method body mentions _S5_ (not after NameOp), then the real object follows.
        let aml = [
            0x70, b'_', b'S', b'5', b'_', 0x60, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02,
            0x0a, 0x03, 0x00,
        ];
        assert_eq!(s5_sleep_types(&aml), Some((3, 0)));
    }

    #[test]
    fn missing_or_malformed() {
        assert_eq!(s5_sleep_types(&[]), None);
        assert_eq!(s5_sleep_types(b"no sleep states here"), None);
        // A package of one element, a truncated package, a non-integer element.
        assert_eq!(
            s5_sleep_types(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x03, 0x01, 0x00]),
            None
        );
        assert_eq!(
            s5_sleep_types(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00]),
            None
        );
        assert_eq!(
            s5_sleep_types(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x70, 0x00]),
            None
        );
    }
}
