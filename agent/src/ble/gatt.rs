//! What discovery and the strap connection share of btleplug: the Heart Rate
//! profile's UUIDs, and btleplug's errors as the agent's.

use btleplug::api::bleuuid::uuid_from_u16;
use hb_shared::ble::{HEART_RATE_MEASUREMENT, HEART_RATE_SERVICE};
use uuid::Uuid;

use crate::Error;

/// The Heart Rate Service (0x180D).
pub(super) const HEART_RATE_SERVICE_UUID: Uuid = uuid_from_u16(HEART_RATE_SERVICE);
/// The Heart Rate Measurement characteristic (0x2A37).
pub(super) const HEART_RATE_MEASUREMENT_UUID: Uuid = uuid_from_u16(HEART_RATE_MEASUREMENT);

/// Maps a btleplug error to [`Error::Ble`] with what was being done.
pub(super) fn ble(what: &'static str) -> impl FnOnce(btleplug::Error) -> Error {
    move |e| Error::Ble(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuids_are_the_heart_rate_profile() {
        assert_eq!(
            HEART_RATE_SERVICE_UUID.to_string(),
            "0000180d-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(
            HEART_RATE_MEASUREMENT_UUID.to_string(),
            "00002a37-0000-1000-8000-00805f9b34fb"
        );
    }
}
