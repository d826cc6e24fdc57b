//! One record of a segment file: `[len: u32 LE][crc32: u32 LE][postcard Reading]`.
//! A torn or corrupt record is told apart by its length and checksum.

use std::io::Read;

use hb_shared::Reading;

/// Largest record accepted when reading back (a reading encodes to ~20–120 bytes).
const MAX_RECORD: u32 = 4096;
/// The length and the checksum before each payload.
const HEADER: u64 = 8;

/// `[len][crc32][postcard]` of one reading.
pub(super) fn encode_record(reading: &Reading) -> std::result::Result<Vec<u8>, String> {
    let payload =
        postcard::to_allocvec(reading).map_err(|e| format!("cannot encode reading: {e}"))?;
    let mut record = Vec::with_capacity(payload.len() + HEADER as usize);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

/// Reads one record: `Ok(None)` at a clean end, `Err(())` for a torn or corrupt one.
pub(super) fn read_record(r: &mut impl Read) -> std::result::Result<Option<(Reading, u64)>, ()> {
    let mut header = [0u8; HEADER as usize];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(_) => return Err(()),
        }
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD {
        return Err(());
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|_| ())?;
    if crc32fast::hash(&payload) != crc {
        return Err(());
    }
    let reading: Reading = postcard::from_bytes(&payload).map_err(|_| ())?;
    Ok(Some((reading, HEADER + u64::from(len))))
}

#[cfg(test)]
mod tests {
    use super::super::tests::reading;
    use super::*;

    #[test]
    fn a_record_reads_back_as_the_reading_it_encodes_and_its_length() {
        let record = encode_record(&reading(3, 7)).unwrap();
        assert_eq!(
            read_record(&mut record.as_slice()),
            Ok(Some((reading(3, 7), record.len() as u64)))
        );
        assert_eq!(read_record(&mut &record[record.len()..]), Ok(None));
    }

    #[test]
    fn a_torn_or_corrupt_record_is_refused() {
        let record = encode_record(&reading(3, 7)).unwrap();
        assert_eq!(read_record(&mut &record[..record.len() - 1]), Err(()));
        assert_eq!(read_record(&mut &record[..3]), Err(()));
        let mut flipped = record.clone();
        flipped[HEADER as usize] ^= 0xff;
        assert_eq!(read_record(&mut flipped.as_slice()), Err(()));
        let mut too_long = record;
        too_long[..4].copy_from_slice(&(MAX_RECORD + 1).to_le_bytes());
        assert_eq!(read_record(&mut too_long.as_slice()), Err(()));
    }
}
