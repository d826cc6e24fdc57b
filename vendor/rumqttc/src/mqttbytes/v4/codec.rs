use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Error, Packet, Publish};

/// hb patch: how much of an oversized publish's payload is kept (see
/// [`Publish::truncated_from`]).
pub const OVERSIZED_PREFIX: usize = 4096;

/// MQTT v4 codec
#[derive(Debug, Clone)]
pub struct Codec {
    /// Maximum packet size allowed by client
    pub max_incoming_size: usize,
    /// Maximum packet size allowed by broker
    pub max_outgoing_size: usize,
    /// hb patch: bytes of an oversized publish still to be read and discarded.
    pub discarding: usize,
}

impl Decoder for Codec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        // hb patch: the rest of an oversized publish already handed out.
        if self.discarding > 0 {
            let n = self.discarding.min(src.len());
            src.advance(n);
            self.discarding -= n;
            if self.discarding > 0 {
                return Ok(None);
            }
        }
        match Packet::read(src, self.max_incoming_size) {
            Ok(packet) => Ok(Some(packet)),
            Err(Error::InsufficientBytes(b)) => {
                // Get more packets to construct the incomplete packet
                src.reserve(b);
                Ok(None)
            }
            // hb patch: a publish too large is handed out cut short instead of
            // closing the connection (other packets that large are still errors).
            Err(Error::PayloadSizeLimitExceeded(_)) if src.first().map(|b| b >> 4) == Some(3) => {
                self.oversized_publish(src)
            }
            Err(e) => Err(e),
        }
    }
}

impl Codec {
    /// hb patch: once the fixed and variable headers and the first
    /// [`OVERSIZED_PREFIX`] payload bytes of a publish larger than
    /// `max_incoming_size` have arrived, returns it with that much payload and
    /// `truncated_from` set, and discards the rest of it as it arrives: memory
    /// stays bounded by the prefix whatever the broker sends.
    fn oversized_publish(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Error> {
        let fixed_header = crate::mqttbytes::parse_fixed_header(src.iter())?;
        let header_len = fixed_header.fixed_header_len;
        let frame_len = fixed_header.frame_length();
        if src.len() < header_len + 2 {
            return Ok(None);
        }
        let topic_len = u16::from_be_bytes([src[header_len], src[header_len + 1]]) as usize;
        let pkid_len = if (src[0] & 0b0110) == 0 { 0 } else { 2 };
        let variable_header_len = 2 + topic_len + pkid_len;
        if variable_header_len > fixed_header.remaining_len {
            return Err(Error::MalformedPacket);
        }
        let payload_len = fixed_header.remaining_len - variable_header_len;
        let kept = (header_len + variable_header_len + OVERSIZED_PREFIX).min(frame_len);
        if src.len() < kept {
            src.reserve(kept - src.len());
            return Ok(None);
        }
        let frame = src.split_to(kept).freeze();
        let mut publish = Publish::read(fixed_header, frame)?;
        publish.truncated_from = Some(payload_len);
        self.discarding = frame_len - kept;
        Ok(Some(Packet::Publish(publish)))
    }
}

impl Encoder<Packet> for Codec {
    type Error = Error;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.write(dst, self.max_outgoing_size)?;

        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Encoder;

    use super::Codec;
    use crate::{mqttbytes::Error, Packet, Publish, QoS};

    #[test]
    fn outgoing_max_packet_size_check() {
        let mut buf = BytesMut::new();
        let mut codec = Codec {
            max_incoming_size: 100,
            max_outgoing_size: 200,
            discarding: 0,
        };

        let mut small_publish = Publish::new("hello/world", QoS::AtLeastOnce, vec![1; 100]);
        small_publish.pkid = 1;
        codec
            .encode(Packet::Publish(small_publish), &mut buf)
            .unwrap();

        let large_publish = Publish::new("hello/world", QoS::AtLeastOnce, vec![1; 265]);
        match codec.encode(Packet::Publish(large_publish), &mut buf) {
            Err(Error::OutgoingPacketTooLarge {
                pkt_size: 281,
                max: 200,
            }) => {}
            _ => unreachable!(),
        }
    }

    /// hb patch.
    #[test]
    fn an_oversized_publish_is_handed_out_cut_short_and_the_next_packet_read() {
        use tokio_util::codec::Decoder;
        let mut codec = Codec {
            max_incoming_size: 10_000,
            max_outgoing_size: 1_000_000,
            discarding: 0,
        };
        let mut wire = BytesMut::new();
        let mut big = Publish::new("a/b", QoS::AtLeastOnce, vec![7; 50_000]);
        big.pkid = 9;
        codec.encode(Packet::Publish(big), &mut wire).unwrap();
        let mut small = Publish::new("a/c", QoS::AtLeastOnce, vec![1; 10]);
        small.pkid = 10;
        codec.encode(Packet::Publish(small.clone()), &mut wire).unwrap();

        // Fed in 1000-byte pieces, as a socket would.
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(1000) {
            src.extend_from_slice(piece);
            while let Some(p) = codec.decode(&mut src).unwrap() {
                out.push(p);
            }
            assert!(src.len() <= 10_000 + 1000, "buffered {}", src.len());
        }
        match &out[..] {
            [Packet::Publish(first), Packet::Publish(second)] => {
                assert_eq!(first.topic, "a/b");
                assert_eq!(first.pkid, 9);
                assert_eq!(first.truncated_from, Some(50_000));
                assert_eq!(first.payload.len(), super::OVERSIZED_PREFIX);
                assert_eq!(second, &small);
            }
            other => panic!("{other:?}"),
        }
    }
}
