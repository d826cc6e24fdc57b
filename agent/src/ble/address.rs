//! Strap addresses: normalising them, the device id a strap gets from its
//! address, and the allow-list. Plain text handling, in every build (not only with
//! the `ble` feature): `--ble-allow` is checked at start-up in every build, and the
//! tests always run.

use hb_shared::DeviceId;

use crate::{Error, Result};

/// Prefix of every BLE device id, so that real straps never collide with the
/// simulator's or configured device names.
pub const DEVICE_ID_PREFIX: &str = "ble-";

/// An address without separators, upper-case: `aa:bb:cc:dd:ee:ff`, `AA-BB-…` and
/// `AABBCCDDEEFF` all name the same strap. Only `:`, `-` and `_` are separators;
/// anything else is kept (and then rejected by the callers that validate).
pub fn normalise_address(address: &str) -> String {
    address
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '_'))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The device id of the strap at `address`: `ble-` and its hex digits, e.g.
/// `AA:BB:CC:DD:EE:FF` → `ble-AABBCCDDEEFF`. Derived from the address so that a
/// strap keeps its id (and its epoch file, and its numbering) across reconnects and
/// agent restarts.
pub fn device_id_for_address(address: &str) -> Result<DeviceId> {
    let hex = normalise_address(address);
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Ble(format!(
            "{address:?} is not a Bluetooth address"
        )));
    }
    DeviceId::new(&format!("{DEVICE_ID_PREFIX}{hex}"))
        .map_err(|e| Error::Ble(format!("no device id for address {address:?}: {e}")))
}

/// Whether the strap at `address` may be used: the allow-list (normalised, see
/// [`normalise_address`]) is empty or names it. Used by discovery (feature `ble`);
/// compiled and tested in every build with the rest of this file.
#[cfg_attr(not(feature = "ble"), allow(dead_code))]
pub fn is_allowed(allow: &[String], address: &str) -> bool {
    if allow.is_empty() {
        return true;
    }
    let address = normalise_address(address);
    allow.iter().any(|a| normalise_address(a) == address)
}

/// Validates and normalises the allow-list, so that a typo fails at start-up
/// instead of silently never matching.
pub fn parse_allow_list(allow: &[String]) -> Result<Vec<String>> {
    allow
        .iter()
        .map(|a| {
            device_id_for_address(a)
                .map(|_| normalise_address(a))
                .map_err(|_| {
                    Error::Config(format!(
                        "{a:?} in the BLE allow-list is not a Bluetooth address"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_come_from_the_address() {
        let id = device_id_for_address("aa:bb:cc:dd:ee:0f").unwrap();
        assert_eq!(id.as_str(), "ble-AABBCCDDEE0F");
        assert_eq!(device_id_for_address("AABBCCDDEE0F").unwrap(), id);
        assert_eq!(device_id_for_address("AA-BB-CC-DD-EE-0F").unwrap(), id);
    }

    #[test]
    fn platform_ids_without_an_address_still_give_valid_device_ids() {
        // CoreBluetooth's peripheral ids are UUIDs.
        let id = device_id_for_address("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap();
        assert_eq!(id.as_str(), "ble-3F2504E04F8911D39A0C0305E82C3301");
    }

    #[test]
    fn non_addresses_are_rejected() {
        for bad in [
            "",
            ":::",
            "AA:BB:CC:DD:EE:ZZ",
            "AA BB",
            "AA/BB",
            &"A".repeat(61),
        ] {
            assert!(device_id_for_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_allow_list_accepts_every_strap() {
        assert!(is_allowed(&[], "AA:BB:CC:DD:EE:FF"));
    }

    #[test]
    fn the_allow_list_matches_whatever_the_spelling() {
        let allow = vec!["aa:bb:cc:dd:ee:ff".to_string(), "112233445566".to_string()];
        assert!(is_allowed(&allow, "AA:BB:CC:DD:EE:FF"));
        assert!(is_allowed(&allow, "11:22:33:44:55:66"));
        assert!(!is_allowed(&allow, "AA:BB:CC:DD:EE:FE"));
    }

    #[test]
    fn invalid_allow_list_entries_fail_at_start_up() {
        let allow = vec!["AA:BB:CC:DD:EE:FF".to_string(), "kitchen strap".to_string()];
        assert!(matches!(parse_allow_list(&allow), Err(Error::Config(_))));
        let ok = parse_allow_list(&["aa-bb-cc-dd-ee-ff".to_string()]).unwrap();
        assert_eq!(ok, ["AABBCCDDEEFF"]);
    }
}
